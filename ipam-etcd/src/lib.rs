//! etcd v3 datastore for `ipam-core`: [`EtcdStore`] keeps each IPAM object under one key and
//! makes every compare-and-swap write one etcd transaction.
//!
//! # Key layout
//!
//! Under a configurable prefix `P` (default [`DEFAULT_PREFIX`], `/ipam/v1/`):
//!
//! - `P<plural>/<name>` holds a live object's JSON (`P ipamblocks/10-0-0-0-26`). Its mod
//!   revision is the object's [`Revision`](ipam_core::Revision); get by name is one range read
//!   of this key, and listing a kind is one range read of `P<plural>/`.
//! - `P nodes/<node>/<plural>/<name>` holds a copy of a block's or an affinity's JSON for the
//!   node it belongs to ([`Resource::node`](ipam_core::Resource::node)); `Scope::Node` listing
//!   is one range read of `P nodes/<node>/<plural>/`. A block with no `host:` affinity has an
//!   empty marker at `P unowned/ipamblocks/<name>` instead. This *placement* key is written in
//!   the same transaction as the primary key, so the two always share a mod revision.
//! - `P deleted/<plural>/<name>` is a soft-deleted object's tombstone: a write of a value with
//!   `deleted: true` moves the object there, so readers never see it, an update of it is
//!   `NotFound`, a create replaces it, and a delete at its revision removes it.
//!
//! # Transactions
//!
//! Create compares the primary key's create revision with 0; update and delete compare its
//! mod revision with the one read. An update also compares the placement key its new value
//! implies: if the object stayed on its node that key carries the same revision and one round
//! trip suffices; if it moves, the store reads the old node and writes again (two round
//! trips, only when claiming or releasing). [`EtcdStore::node_snapshot`](ipam_core::Datastore::node_snapshot)
//! reads the config, pools, reservations and the node's affinities and blocks in one
//! transaction. [`EtcdStore::write_assignment`] writes a block and its handle in one
//! transaction, so the steady-state allocation is one read and one write. A release by
//! handle reads the config and handle in one transaction and its blocks in a second, and
//! writes every block and the handle's delete in one (two reads, one write); a handle spread
//! over more than [`MAX_RELEASE_WRITES`] blocks is released object by object, since etcd
//! bounds a transaction's operations (`--max-txn-ops`, 128 by default).
//!
//! Every round trip is bounded by the configured request timeout; an unreachable or silent
//! etcd fails as [`StoreError::Unavailable`](ipam_core::StoreError::Unavailable).
//!
//! Blocks of Calico's default size (/26) are about 20 KB of JSON. A fully allocated /20 block
//! is about 1.2 MB and is written twice (primary and node copy) in one transaction: etcd needs
//! `--max-request-bytes` above its 1.5 MiB default for blocks that large.
//!
//! # Wire
//!
//! The store speaks etcd's gRPC API through `tonic` with the handful of messages it uses
//! declared by hand (`wire.rs`, etcd's field numbers), rather than through a general etcd
//! client: that keeps the plugin's dependency tree small and needs no `protoc` to build.
//! The tests check it against a real etcd and against etcd's own Rust client as a peer.

mod assignment;
mod client;
mod config;
mod error;
mod keys;
mod release;
mod store;
mod wire;

pub use assignment::HandleWrite;
pub use client::{EtcdStore, TimedOut};
pub use config::EtcdConfig;
pub use error::{Error, Result};
pub use keys::DEFAULT_PREFIX;
pub use release::MAX_RELEASE_WRITES;
