//! SQLite datastore for `ipam-core`: one database file per host (work in progress).
