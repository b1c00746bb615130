//! Opening the file: refuse what is not ours, configure the connection, migrate the schema.

use std::path::Path;
use std::time::Duration;

use rusqlite::config::DbConfig;
use rusqlite::{Connection, ErrorCode, OpenFlags, TransactionBehavior};

use crate::files::{self, Access};
use crate::wal::Wal;
use crate::{Error, Result};

/// The schema version this build reads and writes (`PRAGMA user_version`).
pub const SCHEMA_VERSION: i64 = 2;

/// How long a call waits for another process's write lock before giving up with
/// `StoreError::Unavailable`. Plugin processes on one node queue on the lock; a write holds it
/// for about one fsync, so several seconds means a stuck writer, not a busy one.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// WAL pages after which a commit checkpoints (passively) into the database. A steady-state
/// allocation writes a handful of pages, so this is one checkpoint per twenty or so calls:
/// reading N frames at open costs about N us, a checkpoint two fsyncs (~4 ms), and 128
/// is near the least of the two summed per call.
pub const WAL_CHECKPOINT_PAGES: i64 = 128;

/// Bytes a WAL file is truncated to after a checkpoint resets it.
const WAL_SIZE_LIMIT: i64 = 1 << 20;

/// `MIGRATIONS[v]` takes a database from version `v` to `v + 1`. Version 0 is a fresh file.
const MIGRATIONS: [&str; SCHEMA_VERSION as usize] = [
    // 0 -> 1: the object table and the revision counter.
    "CREATE TABLE objects (
        kind     TEXT    NOT NULL,
        name     TEXT    NOT NULL,
        revision INTEGER NOT NULL,
        node     TEXT,
        deleted  INTEGER NOT NULL DEFAULT 0,
        spec     TEXT    NOT NULL,
        PRIMARY KEY (kind, name)
    ) WITHOUT ROWID;
    CREATE INDEX objects_by_node ON objects (kind, node, name) WHERE node IS NOT NULL;
    CREATE TABLE revision (
        id   INTEGER PRIMARY KEY CHECK (id = 1),
        last INTEGER NOT NULL
    );
    INSERT INTO revision (id, last) VALUES (1, 0);",
    // 1 -> 2: whether a block has room (NULL: not a block, or not known), so that the node
    // snapshot skips full blocks without reading their specs.
    // The partial index matters: `room` sits after `spec` in the row, so testing it on the
    // table would read every block's JSON; the index holds only the rows that may have room.
    "ALTER TABLE objects ADD COLUMN room INTEGER;
    CREATE INDEX objects_with_room ON objects (kind, node, name)
        WHERE node IS NOT NULL AND (room IS NULL OR room != 0);",
];

/// Waits for another process's lock by retrying every 0.1-0.8 ms, for [`BUSY_TIMEOUT`] in
/// all. SQLite's own busy timeout backs off to 100 ms between tries, so with a few writers
/// contending one slept long after the lock was free: 8 processes took ~70 ms a cycle.
fn wait_for_lock(attempt: i32) -> bool {
    const LONGEST: Duration = Duration::from_micros(800);
    let attempts = BUSY_TIMEOUT.as_micros() / LONGEST.as_micros() + 3;
    if u128::try_from(attempt).unwrap_or(u128::MAX) >= attempts {
        return false;
    }
    std::thread::sleep(Duration::from_micros(100 << attempt.clamp(0, 3)));
    true
}

/// Opens (creating if missing) and prepares the database at `path`.
pub(crate) fn open(path: &Path, access: &Access) -> Result<Connection> {
    let wal = files::prepare(path, access)?;
    // NOFOLLOW again in SQLite itself: a symlink swapped in after the check is refused too.
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NOFOLLOW
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let mut conn = Connection::open_with_flags(path, flags).map_err(|source| Error::Open {
        path: path.to_owned(),
        source,
    })?;
    let setup = |source| Error::Setup {
        path: path.to_owned(),
        source,
    };
    conn.busy_handler(Some(wait_for_lock)).map_err(setup)?;
    // Everything up to here only reads: a foreign or newer file is refused before the first
    // statement that could write to it (switching the journal mode rewrites the header).
    // The version and the table count are read in one read transaction: another process may
    // be creating the schema of a fresh file right now, and two separate reads could see
    // "version 0" and then "tables present" and take the file for somebody else's.
    let read = conn.unchecked_transaction().map_err(setup)?;
    check_version(&read, path, user_version(&read, path)?)?;
    drop(read);
    let mode = switch_to_wal(&conn).map_err(setup)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(Error::Incompatible {
            path: path.to_owned(),
            reason: format!("the file system does not support WAL (journal mode is {mode})"),
        });
    }
    // SQLite has the WAL open now. This build's SQLite does not sync the folder itself
    // (`crate::wal` says why that is safe): a WAL it created here needs the sync.
    if !wal.is_what_sqlite_opened() {
        wal.sync_folder()?;
    }
    // FULL, not NORMAL: in WAL mode NORMAL skips the fsync at commit, so a commit survives
    // kill -9 but may be rolled back by a power loss. An allocation that the plugin has
    // already reported to the container runtime would then be handed out a second time
    // after the reboot. One fsync of the WAL per write is the price of that guarantee.
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(setup)?;
    // A plugin process opens the database, allocates and exits. By default the last
    // connection to close checkpoints the WAL into the database: three more fsyncs on every
    // call. The WAL is durable already; SQLite's automatic checkpoint (every ~1000 pages)
    // folds it in during some later commit instead.
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)
        .map_err(setup)?;
    // Each plugin process is the first connection to the WAL, so SQLite rebuilds the WAL
    // index by reading every frame the WAL holds: with the default checkpoint at 1,000
    // pages (4 MB) that was up to hundreds of reads per call. A checkpoint every
    // `WAL_CHECKPOINT_PAGES` keeps that read short and costs one more fsync every few
    // dozen writes; the size limit gives back the space of a WAL that once grew large.
    conn.pragma_update(None, "wal_autocheckpoint", WAL_CHECKPOINT_PAGES)
        .map_err(setup)?;
    conn.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT)
        .map_err(setup)?;
    migrate(&mut conn, path, &wal)?;
    Ok(conn)
}

/// Sets the WAL journal mode and returns the mode in force. Openers of a fresh file that
/// switch at the same moment each hold the read lock the other must wait out; SQLite then
/// answers "busy" at once instead of calling the busy handler (waiting would deadlock), so
/// the switch is tried again, within [`BUSY_TIMEOUT`].
fn switch_to_wal(conn: &Connection) -> rusqlite::Result<String> {
    let deadline = std::time::Instant::now() + BUSY_TIMEOUT;
    loop {
        match conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0)) {
            Err(e)
                if e.sqlite_error_code() == Some(ErrorCode::DatabaseBusy)
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(1));
            }
            done => return done,
        }
    }
}

/// The schema version in the file, mapping "not a database" to its own error.
fn user_version(conn: &Connection, path: &Path) -> Result<i64> {
    conn.query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|source| match source.sqlite_error_code() {
            Some(ErrorCode::NotADatabase) => Error::NotADatabase {
                path: path.to_owned(),
            },
            _ => Error::Setup {
                path: path.to_owned(),
                source,
            },
        })
}

fn check_version(conn: &Connection, path: &Path, found: i64) -> Result<()> {
    if found > SCHEMA_VERSION {
        return Err(Error::NewerSchema {
            path: path.to_owned(),
            found,
            supported: SCHEMA_VERSION,
        });
    }
    if found < 0 {
        return Err(Error::Incompatible {
            path: path.to_owned(),
            reason: format!("schema version {found} is not one this software writes"),
        });
    }
    if found == 0 {
        // Version 0 with tables is somebody else's database: do not add ours beside theirs.
        let tables: i64 = conn
            .query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0))
            .map_err(|source| Error::Setup {
                path: path.to_owned(),
                source,
            })?;
        if tables > 0 {
            return Err(Error::Incompatible {
                path: path.to_owned(),
                reason: "it holds tables but no IPAM schema version".to_owned(),
            });
        }
    }
    Ok(())
}

/// Brings the schema to [`SCHEMA_VERSION`] in one write transaction, re-reading the version
/// under the write lock: several processes may open a fresh file at the same moment.
fn migrate(conn: &mut Connection, path: &Path, wal: &Wal) -> Result<()> {
    let setup = |source| Error::Setup {
        path: path.to_owned(),
        source,
    };
    if user_version(conn, path)? == SCHEMA_VERSION {
        return Ok(());
    }
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(setup)?;
    let found = user_version(&tx, path)?;
    check_version(&tx, path, found)?;
    for step in MIGRATIONS.iter().skip(found as usize) {
        tx.execute_batch(step).map_err(setup)?;
    }
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)
        .map_err(setup)?;
    // Before the commit: whoever sees the schema sees a WAL whose folder entry is durable,
    // even if the process that created the WAL has not finished its own sync.
    wal.sync_folder()?;
    tx.commit().map_err(setup)
}
