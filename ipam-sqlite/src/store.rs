//! `SqliteStore`: the [`Datastore`] over one SQLite file.
//!
//! Each call runs to completion on the calling task: a local SQLite call is short (a read is
//! microseconds, a write one fsync), so it is not worth a thread hop. The connection is not
//! `Sync`, hence the mutex; processes, not threads, are what share the file.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use ipam_core::store::{Op, OpCounter, block_names};
use ipam_core::{
    BatchWrite, BlockAffinity, Datastore, HandleSnapshot, IpPool, IpReservation, IpamBlock,
    IpamConfig, IpamHandle, NodeSnapshot, OpCounts, Resource, Revision, Scope, StoreError, Stored,
    Write,
};
use rusqlite::{Connection, ErrorCode, OptionalExtension, Transaction, TransactionBehavior};

use crate::{Access, Result, schema};

/// A [`Datastore`] kept in one SQLite database file.
pub struct SqliteStore {
    conn: Mutex<Connection>,
    counter: OpCounter,
    path: PathBuf,
}

/// What a write expects to find.
#[derive(Clone, Copy)]
enum Expect<'a> {
    /// No live object (a soft-deleted one is replaced).
    Absent,
    /// A live object at this revision.
    Revision(&'a Revision),
}

impl SqliteStore {
    /// Opens the database at `path`, creating the file and its folder if missing and
    /// migrating an older schema. Refuses (without modifying it) a file that is not a SQLite
    /// database or that has a newer schema, and (see [`Access`]) a folder others can write to
    /// or do not own, or a database path that is a symlink. New folders are created 0700 and
    /// files 0600, or 0750 and 0640 for the group `$IPAM_SQLITE_GROUP` names.
    pub fn open(path: impl AsRef<Path>) -> Result<SqliteStore> {
        Self::open_with(path, &Access::from_env()?)
    }

    /// [`open`](Self::open) with explicit access instead of `$IPAM_SQLITE_GROUP`.
    pub fn open_with(path: impl AsRef<Path>, access: &Access) -> Result<SqliteStore> {
        let path = path.as_ref();
        Ok(SqliteStore {
            conn: Mutex::new(schema::open(path, access)?),
            counter: OpCounter::default(),
            path: path.to_owned(),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Changes how long a call waits for another process's lock before failing with
    /// [`StoreError::Unavailable`] (default [`BUSY_TIMEOUT`](crate::BUSY_TIMEOUT)).
    pub fn set_busy_timeout(&self, timeout: std::time::Duration) -> Result<(), StoreError> {
        self.lock().busy_timeout(timeout).map_err(sql)
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock unwinds through the open `Transaction`, whose drop
        // rolls it back, so the connection behind a poisoned lock is still clean.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn get_now<R: Resource>(&self, name: &str) -> Result<Stored<R>, StoreError> {
        self.counter.count(Op::Get);
        get_in::<R>(&self.lock(), name)?.ok_or_else(|| StoreError::not_found::<R>(name))
    }

    fn list_now<R: Resource>(&self, scope: Scope<'_>) -> Result<Vec<Stored<R>>, StoreError> {
        self.counter.count(Op::List);
        list_in(&self.lock(), scope)
    }

    fn snapshot_now(&self, node: &str) -> Result<NodeSnapshot, StoreError> {
        // One round trip, like a list: the point of the override.
        self.counter.count(Op::List);
        let mut conn = self.lock();
        // A deferred transaction that only reads is a WAL read snapshot: all five reads see
        // the same commit, and no writer is blocked by it.
        let tx = conn.transaction().map_err(sql)?;
        let snapshot = NodeSnapshot {
            config: get_in::<IpamConfig>(&tx, IpamConfig::NAME)?,
            pools: list_in::<IpPool>(&tx, Scope::All)?,
            reservations: list_in::<IpReservation>(&tx, Scope::All)?,
            affinities: list_in::<BlockAffinity>(&tx, Scope::Node(node))?,
            blocks: blocks_with_room(&tx, node)?,
        };
        tx.commit().map_err(sql)?;
        Ok(snapshot)
    }

    fn handle_snapshot_now(&self, handle: &str) -> Result<HandleSnapshot, StoreError> {
        // One read transaction: the config, the handle and its blocks from one commit.
        self.counter.count(Op::Get);
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(sql)?;
        let config = get_in::<IpamConfig>(&tx, IpamConfig::NAME)?;
        let handle = get_in::<IpamHandle>(&tx, handle)?;
        let mut blocks = Vec::new();
        for name in handle
            .as_ref()
            .map(block_names)
            .transpose()?
            .iter()
            .flatten()
        {
            blocks.extend(get_in::<IpamBlock>(&tx, name)?);
        }
        tx.commit().map_err(sql)?;
        Ok(HandleSnapshot {
            config,
            handle,
            blocks,
        })
    }

    fn put_now<R: Resource>(
        &self,
        name: &str,
        value: &R,
        expect: Expect<'_>,
    ) -> Result<Revision, StoreError> {
        self.counter.count(match expect {
            Expect::Absent => Op::Create,
            Expect::Revision(_) => Op::Update,
        });
        let mut conn = self.lock();
        let tx = write_tx(&mut conn)?;
        // On error the dropped transaction rolls back the counter bump as well.
        let revision = put_in(&tx, name, value, expect)?;
        tx.commit().map_err(sql)?;
        Ok(revision)
    }

    fn delete_now<R: Resource>(&self, name: &str, rev: &Revision) -> Result<(), StoreError> {
        self.counter.count(Op::Delete);
        let mut conn = self.lock();
        let tx = write_tx(&mut conn)?;
        delete_in::<R>(&tx, name, rev)?;
        tx.commit().map_err(sql)
    }

    fn commit_now(&self, writes: &[BatchWrite]) -> Result<Vec<Option<Revision>>, StoreError> {
        self.counter.count(Op::Update);
        let mut conn = self.lock();
        let tx = write_tx(&mut conn)?;
        let revisions = writes
            .iter()
            .map(|w| match w {
                BatchWrite::Block(w) => apply(&tx, w),
                BatchWrite::Handle(w) => apply(&tx, w),
            })
            .collect::<Result<Vec<_>, _>>()?;
        tx.commit().map_err(sql)?;
        Ok(revisions)
    }
}

/// One write of a batch inside `tx`.
fn apply<R: Resource>(tx: &Transaction<'_>, w: &Write<R>) -> Result<Option<Revision>, StoreError> {
    match w {
        Write::Create { name, value } => put_in(tx, name, value, Expect::Absent).map(Some),
        Write::Update {
            name,
            value,
            revision,
        } => put_in(tx, name, value, Expect::Revision(revision)).map(Some),
        Write::Delete { name, revision } => delete_in::<R>(tx, name, revision).map(|()| None),
    }
}

/// Creates or CAS-updates one object inside `tx`; on failure the caller drops `tx`.
fn put_in<R: Resource>(
    tx: &Transaction<'_>,
    name: &str,
    value: &R,
    expect: Expect<'_>,
) -> Result<Revision, StoreError> {
    let spec = serde_json::to_string(value).map_err(|e| StoreError::Invalid {
        kind: R::KIND,
        name: name.to_owned(),
        reason: e.to_string(),
    })?;
    let revision = next_revision(tx)?;
    let expected = match expect {
        Expect::Absent => -1,
        Expect::Revision(rev) => revision_number(rev),
    };
    let params = (
        R::KIND.as_str(),
        name,
        revision,
        value.node(),
        value.is_deleted(),
        &spec,
        expected,
        value.room_hint(),
    );
    let changed = match expect {
        // Replaces a soft-deleted row; a live one stays and makes this a no-op. (?7, the
        // expected revision, is bound but unused: SQLite counts parameters up to ?8.)
        Expect::Absent => tx.prepare_cached(
            "INSERT INTO objects (kind, name, revision, node, deleted, spec, room)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?8)
             ON CONFLICT (kind, name) DO UPDATE SET revision = excluded.revision,
               node = excluded.node, deleted = excluded.deleted, spec = excluded.spec,
               room = excluded.room
             WHERE objects.deleted",
        ),
        Expect::Revision(_) => tx.prepare_cached(
            "UPDATE objects SET revision = ?3, node = ?4, deleted = ?5, spec = ?6, room = ?8
             WHERE kind = ?1 AND name = ?2 AND revision = ?7 AND NOT deleted",
        ),
    }
    .and_then(|mut stmt| stmt.execute(params))
    .map_err(sql)?;
    if changed == 0 {
        return Err(why_not::<R>(tx, name, expect)?);
    }
    Ok(Revision::from_u64(revision as u64))
}

/// CAS-deletes one object inside `tx`.
fn delete_in<R: Resource>(
    tx: &Transaction<'_>,
    name: &str,
    rev: &Revision,
) -> Result<(), StoreError> {
    let changed = tx
        .prepare_cached("DELETE FROM objects WHERE kind = ?1 AND name = ?2 AND revision = ?3")
        .and_then(|mut s| s.execute((R::KIND.as_str(), name, revision_number(rev))))
        .map_err(sql)?;
    if changed == 0 {
        return Err(match row_state::<R>(tx, name)? {
            None => StoreError::not_found::<R>(name),
            Some(_) => StoreError::conflict::<R>(name),
        });
    }
    Ok(())
}

/// Starts a write transaction holding the database's write lock from the first statement, so
/// that a writer waits for the lock (busy timeout) instead of failing with SQLITE_BUSY when
/// it upgrades a read lock halfway.
fn write_tx(conn: &mut Connection) -> Result<Transaction<'_>, StoreError> {
    conn.transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sql)
}

/// Takes the next revision number: a counter in the file, so numbers never repeat across
/// deletes, processes or reopenings.
fn next_revision(tx: &Transaction<'_>) -> Result<i64, StoreError> {
    tx.prepare_cached("UPDATE revision SET last = last + 1 WHERE id = 1 RETURNING last")
        .and_then(|mut s| s.query_row([], |r| r.get(0)))
        .map_err(sql)
}

/// A revision as the number stored in the file; anything that is not one of ours can never
/// match a row (-1 is never handed out), which makes the write a conflict or not-found.
fn revision_number(rev: &Revision) -> i64 {
    rev.0.parse().unwrap_or(-1)
}

/// Why a write changed no row: the error it must return.
fn why_not<R: Resource>(
    tx: &Transaction<'_>,
    name: &str,
    expect: Expect<'_>,
) -> Result<StoreError, StoreError> {
    let state = row_state::<R>(tx, name)?;
    Ok(match (expect, state) {
        (Expect::Absent, _) => StoreError::already_exists::<R>(name),
        (Expect::Revision(_), None | Some(true)) => StoreError::not_found::<R>(name),
        (Expect::Revision(_), Some(false)) => StoreError::conflict::<R>(name),
    })
}

/// Whether a row exists, and if so whether it is soft-deleted.
fn row_state<R: Resource>(conn: &Connection, name: &str) -> Result<Option<bool>, StoreError> {
    conn.prepare_cached("SELECT deleted FROM objects WHERE kind = ?1 AND name = ?2")
        .and_then(|mut s| {
            s.query_row((R::KIND.as_str(), name), |r| r.get(0))
                .optional()
        })
        .map_err(sql)
}

fn get_in<R: Resource>(conn: &Connection, name: &str) -> Result<Option<Stored<R>>, StoreError> {
    let row: Option<(i64, String)> = conn
        .prepare_cached(
            "SELECT revision, spec FROM objects WHERE kind = ?1 AND name = ?2 AND NOT deleted",
        )
        .and_then(|mut s| {
            s.query_row((R::KIND.as_str(), name), |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()
        })
        .map_err(sql)?;
    row.map(|(rev, spec)| decode(name.to_owned(), rev, &spec))
        .transpose()
}

fn list_in<R: Resource>(conn: &Connection, scope: Scope<'_>) -> Result<Vec<Stored<R>>, StoreError> {
    // Names sort by bytes (SQLite's BINARY collation), the same order as a Rust `String`.
    // Both statements take the same two parameters so one call binds either; for `All` the
    // second is NULL and `?2 IS NULL` is always true.
    match scope {
        Scope::All => query_in(
            conn,
            "SELECT name, revision, spec FROM objects
             WHERE kind = ?1 AND ?2 IS NULL AND NOT deleted ORDER BY name",
            None,
        ),
        Scope::Node(node) => query_in(
            conn,
            // Named, because without statistics the planner prefers walking the kind's
            // primary key (already in name order) over the node index: every block in the
            // cluster instead of the node's.
            "SELECT name, revision, spec FROM objects INDEXED BY objects_by_node
             WHERE kind = ?1 AND node = ?2 AND NOT deleted ORDER BY name",
            Some(node),
        ),
    }
}

/// The node's blocks that may have room: full ones (`room = 0`) are not even read, so a node
/// that has filled many blocks still allocates at the cost of the blocks it can use.
fn blocks_with_room(conn: &Connection, node: &str) -> Result<Vec<Stored<IpamBlock>>, StoreError> {
    query_in(
        conn,
        "SELECT name, revision, spec FROM objects INDEXED BY objects_with_room
         WHERE kind = ?1 AND node = ?2 AND node IS NOT NULL AND (room IS NULL OR room != 0)
           AND NOT deleted
         ORDER BY name",
        Some(node),
    )
}

/// Runs a `SELECT name, revision, spec` over objects of kind `R` (?1) and decodes the rows.
fn query_in<R: Resource>(
    conn: &Connection,
    sql_text: &str,
    node: Option<&str>,
) -> Result<Vec<Stored<R>>, StoreError> {
    let mut stmt = conn.prepare_cached(sql_text).map_err(sql)?;
    let rows = stmt
        .query_map((R::KIND.as_str(), node), |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
            ))
        })
        .map_err(sql)?;
    rows.map(|row| {
        let (name, rev, spec) = row.map_err(sql)?;
        decode(name, rev, &spec)
    })
    .collect()
}

fn decode<R: Resource>(name: String, rev: i64, spec: &str) -> Result<Stored<R>, StoreError> {
    let value = serde_json::from_str(spec).map_err(|e| StoreError::Other {
        source: format!("{} {name:?} holds a spec that does not parse: {e}", R::KIND).into(),
    })?;
    Ok(Stored {
        name,
        revision: Revision::from_u64(rev as u64),
        value,
    })
}

/// Maps a SQLite error: a lock still held by another process after the busy timeout is
/// `Unavailable` (the same call can succeed later), anything else is `Other`.
fn sql(e: rusqlite::Error) -> StoreError {
    match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
            StoreError::Unavailable { source: e.into() }
        }
        _ => StoreError::Other { source: e.into() },
    }
}

impl Datastore for SqliteStore {
    async fn get<R: Resource>(&self, name: &str) -> Result<Stored<R>, StoreError> {
        self.get_now(name)
    }

    async fn list<R: Resource>(&self, scope: Scope<'_>) -> Result<Vec<Stored<R>>, StoreError> {
        self.list_now(scope)
    }

    async fn create<R: Resource>(&self, name: &str, value: R) -> Result<Revision, StoreError> {
        self.put_now(name, &value, Expect::Absent)
    }

    async fn update<R: Resource>(
        &self,
        name: &str,
        value: R,
        revision: &Revision,
    ) -> Result<Revision, StoreError> {
        self.put_now(name, &value, Expect::Revision(revision))
    }

    async fn delete<R: Resource>(&self, name: &str, revision: &Revision) -> Result<(), StoreError> {
        self.delete_now::<R>(name, revision)
    }

    fn op_counts(&self) -> OpCounts {
        self.counter.snapshot()
    }

    async fn node_snapshot(&self, node: &str) -> Result<NodeSnapshot, StoreError> {
        self.snapshot_now(node)
    }

    async fn handle_snapshot(&self, handle: &str) -> Result<HandleSnapshot, StoreError> {
        self.handle_snapshot_now(handle)
    }

    fn supports_commit(&self) -> bool {
        true
    }

    async fn commit(&self, writes: Vec<BatchWrite>) -> Result<Vec<Option<Revision>>, StoreError> {
        self.commit_now(&writes)
    }
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}
