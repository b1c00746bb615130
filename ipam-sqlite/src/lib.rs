//! SQLite datastore for `ipam-core`: one database file per host, shared by every plugin
//! process on it, safe across `kill -9` and power loss.
//!
//! # File layout
//!
//! One SQLite database (bundled SQLite, WAL mode, so `ipam.db` is accompanied by
//! `ipam.db-wal` and `ipam.db-shm` while in use). `PRAGMA user_version` holds the schema
//! version ([`SCHEMA_VERSION`]). Schema 1 has two tables:
//!
//! - `objects(kind, name, revision, node, deleted, spec)`, keyed by `(kind, name)`: `kind` is
//!   the Kubernetes kind (`IPAMBlock`), `spec` the object's Calico v1 spec as JSON text,
//!   `node` the owning node for node-scoped listing (indexed), `deleted` the soft-delete flag.
//! - `revision(id, last)`: one row, the last revision handed out. Every write takes the next
//!   number, so a revision never repeats, not even for an object deleted and created again.
//!
//! # Guarantees
//!
//! - Every write is one `BEGIN IMMEDIATE` transaction: concurrent processes queue on the
//!   write lock (up to [`BUSY_TIMEOUT`], then [`StoreError::Unavailable`]) instead of failing
//!   halfway. Updates and deletes are compare-and-swap on the revision.
//! - `synchronous=FULL`: a write that returned is on disk (see [`store`]'s comment on why).
//!   The WAL's folder entry is made durable once, when the WAL is created, rather than by
//!   every connection (the `wal` module says why that is as safe).
//! - A steady-state [`Datastore::node_snapshot`] is one read transaction: one consistent view.
//! - Opening a file that is not a SQLite database, or one written by a newer schema, fails
//!   with a typed [`Error`] and leaves the file as it was.
//!
//! ```
//! # pollster::block_on(async {
//! use ipam_core::{Datastore, IpamHandle};
//! let dir = tempfile::tempdir().unwrap();
//! let store = ipam_sqlite::SqliteStore::open(dir.path().join("state/ipam.db")).unwrap();
//! let rev = store.create("h1", IpamHandle::new("h1")).await.unwrap();
//! // A second create of a live name is refused; a write naming an old revision conflicts.
//! assert!(store.create("h1", IpamHandle::new("h1")).await.is_err());
//! store.update("h1", IpamHandle::new("h1"), &rev).await.unwrap();
//! assert!(store.update("h1", IpamHandle::new("h1"), &rev).await.unwrap_err().is_conflict());
//! # });
//! ```
//!
//! [`StoreError::Unavailable`]: ipam_core::StoreError::Unavailable
//! [`Datastore::node_snapshot`]: ipam_core::Datastore::node_snapshot

pub mod files;
mod path;
mod schema;
pub mod store;
mod wal;

use std::path::PathBuf;

pub use files::{Access, GROUP_ENV};
pub use path::{PATH_ENV, default_path};
pub use schema::{BUSY_TIMEOUT, SCHEMA_VERSION, WAL_CHECKPOINT_PAGES};
pub use store::SqliteStore;

/// What opening a database can fail with. Operations on an open store fail with
/// [`ipam_core::StoreError`] instead.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The folder that should hold the database could not be created.
    #[error("cannot create the folder {path:?} for the IPAM database")]
    CreateDir {
        /// The folder.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The folder or a file of the database is not safe to use; nothing was changed.
    #[error("refusing the IPAM database path {path:?}: {problem}")]
    UnsafePath {
        /// The folder or file.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        problem: files::Unsafe,
    },
    /// A database file could not be created or its mode set.
    #[error("cannot create {path:?} for the IPAM database")]
    CreateFile {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// `IPAM_SQLITE_GROUP` names no group number or name in `/etc/group`.
    #[error("{GROUP_ENV}={group:?} is not a group number or a group in /etc/group")]
    UnknownGroup {
        /// The value given.
        group: String,
    },
    /// SQLite could not open (or create) the file.
    #[error("cannot open the IPAM database {path:?}")]
    Open {
        /// The database file.
        path: PathBuf,
        /// What SQLite said.
        #[source]
        source: rusqlite::Error,
    },
    /// The file exists but is not a SQLite database; it was left untouched.
    #[error("{path:?} is not a SQLite database; refusing to use it as the IPAM database")]
    NotADatabase {
        /// The file.
        path: PathBuf,
    },
    /// The database was written by a newer version of this software; it was left untouched.
    #[error(
        "the IPAM database {path:?} has schema version {found}, newer than the {supported} this \
         build knows; upgrade the software"
    )]
    NewerSchema {
        /// The file.
        path: PathBuf,
        /// The version in the file.
        found: i64,
        /// The newest version this build can read and write.
        supported: i64,
    },
    /// The file is a database but not one this software wrote (a version it has no
    /// migration from, or the wrong tables).
    #[error("the IPAM database {path:?} is not usable: {reason}")]
    Incompatible {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Configuring the connection or migrating the schema failed.
    #[error("cannot prepare the IPAM database {path:?}")]
    Setup {
        /// The file.
        path: PathBuf,
        /// What SQLite said.
        #[source]
        source: rusqlite::Error,
    },
}

/// Results of opening a store.
pub type Result<T, E = Error> = std::result::Result<T, E>;
