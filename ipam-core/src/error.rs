//! The allocator's errors.
//!
//! Three classes, as in Calico: conflicts are retried inside the client and never returned;
//! validation errors (bad input, exhausted pools, limits) go back to the caller unchanged;
//! re-evaluate errors (`BlockNotEmpty`) tell the caller to skip and try later.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::store::StoreError;

/// `Result` with the allocator's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What an IPAM operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A CIDR or address did not parse or is not a network address.
    #[error("invalid CIDR {cidr:?}: {reason}")]
    InvalidCidr {
        /// The text given.
        cidr: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A block size outside the family's range.
    #[error("block size /{size} is outside the {family} range /{min}../{max}")]
    BlockSizeOutOfRange {
        /// The size given.
        size: u8,
        /// `IPv4` or `IPv6`.
        family: &'static str,
        /// Smallest allowed prefix.
        min: u8,
        /// Largest allowed prefix.
        max: u8,
    },
    /// A new pool overlaps an existing one.
    #[error("pool {cidr} overlaps pool {other:?} ({other_cidr})")]
    PoolOverlap {
        /// The new pool's CIDR.
        cidr: IpNet,
        /// The existing pool's name.
        other: String,
        /// The existing pool's CIDR.
        other_cidr: IpNet,
    },
    /// A new pool covers a range no workload should get an address from (loopback,
    /// multicast, ...) and the caller did not allow special ranges.
    #[error("pool {cidr} {reason}; allow special ranges to create it anyway")]
    SpecialRange {
        /// The new pool's CIDR.
        cidr: IpNet,
        /// Which special range it covers.
        reason: &'static str,
    },
    /// A pool with that name already exists.
    #[error("pool {name:?} already exists")]
    PoolExists {
        /// The pool name.
        name: String,
    },
    /// No pool has that name.
    #[error("pool {name:?} not found")]
    PoolNotFound {
        /// The name or CIDR asked for.
        name: String,
    },
    /// A pool change that Calico also forbids (such as a new CIDR or block size).
    #[error("pool {name:?} cannot be changed: {reason}")]
    PoolImmutable {
        /// The pool name.
        name: String,
        /// What may not change.
        reason: &'static str,
    },
    /// The pool still holds allocations.
    #[error("pool {name:?} still has {in_use} addresses in use")]
    PoolInUse {
        /// The pool name.
        name: String,
        /// Addresses still allocated.
        in_use: u64,
    },
    /// The address is in no enabled pool.
    #[error("{ip} is not in any enabled IP pool")]
    NotInPool {
        /// The address.
        ip: IpAddr,
    },
    /// The address is covered by an `IPReservation`.
    #[error("{ip} is reserved by IPReservation {reservation:?}")]
    Reserved {
        /// The address.
        ip: IpAddr,
        /// The reservation's name.
        reservation: String,
    },
    /// The address is already allocated.
    #[error("{ip} is already in use (handle {handle:?})")]
    AlreadyAssigned {
        /// The address.
        ip: IpAddr,
        /// Its current owner, if recorded.
        handle: Option<String>,
    },
    /// Fewer addresses are free than were asked for; nothing was kept.
    #[error("no free {family} addresses: asked for {requested}, {available} could be found")]
    PoolExhausted {
        /// `IPv4` or `IPv6`.
        family: &'static str,
        /// Addresses asked for.
        requested: u32,
        /// Addresses that could have been given.
        available: u32,
    },
    /// No pool is usable for this request (disabled, selector, allowed uses, family).
    #[error("no {family} pool is usable for node {node:?}{detail}")]
    NoCandidatePools {
        /// `IPv4` or `IPv6`.
        family: &'static str,
        /// The node asked for.
        node: String,
        /// Which requested pools were refused, if any.
        detail: String,
    },
    /// Strict affinity forbids using another node's block.
    #[error("{ip} is in block {block} of node {owner:?} and strict affinity is on")]
    StrictAffinity {
        /// The address.
        ip: IpAddr,
        /// Its block.
        block: IpNet,
        /// The block's owner.
        owner: String,
    },
    /// The node already holds as many blocks as it may.
    #[error("node {node:?} already holds {limit} blocks (maxBlocksPerHost)")]
    BlockLimit {
        /// The node.
        node: String,
        /// The limit in force.
        limit: u32,
    },
    /// The block still has allocations and the caller required it to be empty.
    #[error("block {block} is not empty")]
    BlockNotEmpty {
        /// The block.
        block: IpNet,
    },
    /// The block is owned by another node.
    #[error("block {block} is claimed by {owner:?}")]
    BlockOwned {
        /// The block.
        block: IpNet,
        /// Its owner.
        owner: String,
    },
    /// No handle has that ID.
    #[error("handle {handle:?} not found")]
    HandleNotFound {
        /// The handle ID.
        handle: String,
    },
    /// A handle ID that cannot name an object.
    #[error("invalid handle ID {handle:?}: {reason}")]
    InvalidHandle {
        /// The ID given.
        handle: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An object name that Kubernetes would refuse.
    #[error(
        "invalid {kind} name {name:?}: use lowercase letters, digits, '-' and '.' (at most 253)"
    )]
    InvalidName {
        /// What was being named.
        kind: &'static str,
        /// The name given.
        name: String,
    },
    /// A node name that cannot be used.
    #[error("invalid node name {node:?}: use letters, digits, '-', '.', '_' (at most 253)")]
    InvalidNodeName {
        /// The name given.
        node: String,
    },
    /// A selector that does not parse.
    #[error("invalid selector {selector:?}: {reason}")]
    InvalidSelector {
        /// The selector text.
        selector: String,
        /// Where and why parsing failed.
        reason: String,
    },
    /// An IPAMConfig that breaks a cross-field rule.
    #[error("invalid IPAMConfig: {reason}")]
    InvalidConfig {
        /// The rule broken.
        reason: &'static str,
    },
    /// An object read from the datastore breaks the model's rules (an index past its array,
    /// a free ordinal listed twice, a selector that does not parse): it is neither used for
    /// assignment nor written back.
    #[error("stored {kind} {name:?} is corrupt: {problem}")]
    CorruptObject {
        /// The resource kind (`IPAMBlock`, `IPPool`).
        kind: &'static str,
        /// The object's name.
        name: String,
        /// What is wrong with it.
        problem: String,
    },
    /// Too many compare-and-swap conflicts in a row.
    #[error("gave up {operation} after {attempts} conflicting writes")]
    RetriesExhausted {
        /// What was being done.
        operation: &'static str,
        /// Attempts made.
        attempts: u32,
    },
    /// A datastore error other than a conflict.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Error {
    /// Whether a later retry of the same call may succeed (datastore down, conflict storm).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::RetriesExhausted { .. } | Error::Store(StoreError::Unavailable { .. })
        )
    }
}
