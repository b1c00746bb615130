//! The datastore contract: typed objects with revisions, and compare-and-swap writes.
//!
//! A backend stores the six resource kinds by name. Every write names the revision it
//! read; a moved revision is a [`StoreError::Conflict`], which only the allocator's retry
//! helper handles. Objects marked `deleted` are absent to every reader.

use std::fmt;
use std::future::Future;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::model::{BlockAffinity, IpPool, IpReservation, IpamBlock, IpamConfig, IpamHandle};

mod counts;
mod error;

pub use counts::{Op, OpCounter, OpCounts};
pub use error::StoreError;

/// The six resource kinds of `crd.projectcalico.org/v1` that IPAM uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// `IPPool`.
    IpPool,
    /// `IPAMBlock`.
    IpamBlock,
    /// `BlockAffinity`.
    BlockAffinity,
    /// `IPAMHandle`.
    IpamHandle,
    /// `IPAMConfig`.
    IpamConfig,
    /// `IPReservation`.
    IpReservation,
}

/// An object's version: opaque, compared only for equality.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Revision(pub String);

/// A stored object: its name, the revision it was read at, and its spec.
#[derive(Clone, Debug, PartialEq)]
pub struct Stored<R> {
    /// The object name (`metadata.name`).
    pub name: String,
    /// The revision to name in a compare-and-swap write.
    pub revision: Revision,
    /// The spec.
    pub value: R,
}

/// Which objects a `list` returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope<'a> {
    /// Every live object of the kind.
    All,
    /// Objects tied to one node (see [`Resource::node`]); a backend answers from an index.
    Node(&'a str),
}

/// What the allocator reads about one node in the steady state, ideally in one round trip.
#[derive(Clone, Debug, Default)]
pub struct NodeSnapshot {
    /// The IPAM config, if one is stored.
    pub config: Option<Stored<IpamConfig>>,
    /// Every pool.
    pub pools: Vec<Stored<IpPool>>,
    /// Every reservation.
    pub reservations: Vec<Stored<IpReservation>>,
    /// The node's affinities, in any state.
    pub affinities: Vec<Stored<BlockAffinity>>,
    /// Blocks whose `affinity` names the node and that may have room
    /// ([`IpamBlock::has_room`]). A store may leave out full blocks, so that the steady state
    /// does not read every block a busy node has filled; it may also include them.
    pub blocks: Vec<Stored<IpamBlock>>,
}

/// What a release by handle reads, ideally in one round trip.
#[derive(Clone, Debug, Default)]
pub struct HandleSnapshot {
    /// The IPAM config, if one is stored (its cooldown decides how addresses are freed).
    pub config: Option<Stored<IpamConfig>>,
    /// The handle, if it exists.
    pub handle: Option<Stored<IpamHandle>>,
    /// The blocks the handle names that exist, in the handle's order.
    pub blocks: Vec<Stored<IpamBlock>>,
}

/// One write of a [`Datastore::commit`] batch.
#[derive(Clone, Debug, PartialEq)]
pub enum Write<R> {
    /// Create; fails with `AlreadyExists` if a live object has the name.
    Create {
        /// The object name.
        name: String,
        /// The new value.
        value: R,
    },
    /// Compare-and-swap update.
    Update {
        /// The object name.
        name: String,
        /// The new value.
        value: R,
        /// The revision the caller read.
        revision: Revision,
    },
    /// Compare-and-swap delete.
    Delete {
        /// The object name.
        name: String,
        /// The revision the caller read.
        revision: Revision,
    },
}

impl BatchWrite {
    /// The object the write names.
    pub fn name(&self) -> &str {
        match self {
            BatchWrite::Handle(w) => w.name(),
            BatchWrite::Block(w) => w.name(),
        }
    }
}

impl<R> Write<R> {
    /// The object the write names.
    pub fn name(&self) -> &str {
        match self {
            Write::Create { name, .. }
            | Write::Update { name, .. }
            | Write::Delete { name, .. } => name,
        }
    }
}

/// A write to a block or a handle: the objects an assignment or release changes together.
#[derive(Clone, Debug, PartialEq)]
pub enum BatchWrite {
    /// A write of an `IPAMBlock`.
    Block(Write<IpamBlock>),
    /// A write of an `IPAMHandle`.
    Handle(Write<IpamHandle>),
}

/// A resource kind the datastore can hold.
pub trait Resource:
    Clone + fmt::Debug + Send + Sync + Serialize + DeserializeOwned + 'static
{
    /// The kind tag.
    const KIND: Kind;

    /// Whether the object is soft-deleted (absent to readers).
    fn is_deleted(&self) -> bool {
        false
    }

    /// The node this object belongs to, for [`Scope::Node`] listing.
    fn node(&self) -> Option<&str> {
        None
    }

    /// For blocks, [`IpamBlock::has_room`]: an index a store may keep so that
    /// [`Datastore::node_snapshot`] can skip full blocks without reading them.
    fn room_hint(&self) -> Option<bool> {
        None
    }
}

/// An object whose labels pool selectors read: the node a request is for, and the pod's
/// namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Labelled<'a> {
    /// A node, by name.
    Node(&'a str),
    /// A namespace, by name.
    Namespace(&'a str),
}

/// A datastore of IPAM objects with compare-and-swap writes.
///
/// Implementations count their round trips in [`Datastore::op_counts`]. They never retry
/// conflicts themselves, and take no locks that outlive a call.
pub trait Datastore: Send + Sync {
    /// Reads one live object.
    fn get<R: Resource>(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Stored<R>, StoreError>> + Send;

    /// Lists live objects of a kind, sorted by name.
    fn list<R: Resource>(
        &self,
        scope: Scope<'_>,
    ) -> impl Future<Output = Result<Vec<Stored<R>>, StoreError>> + Send;

    /// Creates an object; [`StoreError::AlreadyExists`] if a live one has the name.
    /// A soft-deleted object of that name is replaced.
    fn create<R: Resource>(
        &self,
        name: &str,
        value: R,
    ) -> impl Future<Output = Result<Revision, StoreError>> + Send;

    /// Replaces an object if its revision is still `revision`; [`StoreError::Conflict`] if not,
    /// [`StoreError::NotFound`] if it is gone.
    fn update<R: Resource>(
        &self,
        name: &str,
        value: R,
        revision: &Revision,
    ) -> impl Future<Output = Result<Revision, StoreError>> + Send;

    /// Removes an object if its revision is still `revision` (soft-deleted objects included).
    fn delete<R: Resource>(
        &self,
        name: &str,
        revision: &Revision,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Round trips so far.
    fn op_counts(&self) -> OpCounts;

    /// Whether [`Datastore::commit`] is available. Stores with multi-object transactions
    /// (SQLite, etcd) say yes; the allocator then writes a block and its handle in one round
    /// trip, and a crash can never leave them disagreeing.
    fn supports_commit(&self) -> bool {
        false
    }

    /// Applies `writes` atomically: all of them, or none and the first failure (`Conflict`,
    /// `AlreadyExists`, `NotFound`). Returns each write's new revision (`None` for deletes).
    /// Counted as one update round trip. The default refuses: callers check
    /// [`Datastore::supports_commit`] first.
    fn commit(
        &self,
        writes: Vec<BatchWrite>,
    ) -> impl Future<Output = Result<Vec<Option<Revision>>, StoreError>> + Send {
        let _ = writes;
        async {
            Err(StoreError::Invalid {
                kind: Kind::IpamBlock,
                name: String::new(),
                reason: "this datastore has no multi-object transactions".into(),
            })
        }
    }

    /// Whether [`Datastore::commit`] takes a release batch: block updates and deletes
    /// followed by the handle's delete. Stores that commit only the assignment shape (a
    /// handle write and one block update) say `false`, and a release writes object by object.
    fn commits_releases(&self) -> bool {
        self.supports_commit()
    }

    /// The most writes one [`Datastore::commit`] batch may hold (a store's transactions are
    /// bounded: etcd's `--max-txn-ops`); a release of a handle spread over more blocks
    /// writes object by object.
    fn max_commit_writes(&self) -> usize {
        usize::MAX
    }

    /// The config, the handle and the blocks it names: everything a release by handle reads.
    /// Backends that can read several keys in one transaction override this.
    fn handle_snapshot(
        &self,
        handle: &str,
    ) -> impl Future<Output = Result<HandleSnapshot, StoreError>> + Send {
        async move {
            let config = present(self.get::<IpamConfig>(IpamConfig::NAME).await)?;
            let handle = present(self.get::<IpamHandle>(handle).await)?;
            let mut blocks = Vec::new();
            let names = handle.as_ref().map(block_names).transpose()?;
            for name in names.iter().flatten() {
                blocks.extend(present(self.get::<IpamBlock>(name).await)?);
            }
            Ok(HandleSnapshot {
                config,
                handle,
                blocks,
            })
        }
    }

    /// The labels of a node or a namespace where this datastore holds those objects (the
    /// Kubernetes datastore reads the Node and Namespace); `Ok(None)` where it does not,
    /// and when the object does not exist.
    fn labels(
        &self,
        object: Labelled<'_>,
    ) -> impl Future<Output = Result<Option<crate::Labels>, StoreError>> + Send {
        let _ = object;
        async { Ok(None) }
    }

    /// Rewrites `node`'s objects that an older Calico stored in a shape this store's lookups
    /// miss (Calico before v3.30 wrote BlockAffinities without the labels a node's are
    /// listed by), as Calico's `UpgradeHost` does, and returns how many; `Ok(None)` where
    /// the store has nothing of the kind. Only `node`'s own objects, so that nodes doing it at
    /// once do not contend.
    fn upgrade_node(
        &self,
        node: &str,
    ) -> impl Future<Output = Result<Option<usize>, StoreError>> + Send {
        let _ = node;
        async { Ok(None) }
    }

    /// Everything the allocator reads for `node` before assigning. Backends that can read
    /// several ranges at once (a SQLite read transaction, an etcd transaction) override this.
    fn node_snapshot(
        &self,
        node: &str,
    ) -> impl Future<Output = Result<NodeSnapshot, StoreError>> + Send {
        async move {
            let config = match self.get::<IpamConfig>(IpamConfig::NAME).await {
                Ok(c) => Some(c),
                Err(StoreError::NotFound { .. }) => None,
                Err(e) => return Err(e),
            };
            let mut blocks: Vec<Stored<IpamBlock>> = self.list(Scope::Node(node)).await?;
            blocks.retain(|b| b.value.has_room());
            Ok(NodeSnapshot {
                config,
                pools: self.list(Scope::All).await?,
                reservations: self.list(Scope::All).await?,
                affinities: self.list(Scope::Node(node)).await?,
                blocks,
            })
        }
    }
}

/// The object names of the blocks a handle counts addresses in.
pub fn block_names(handle: &Stored<IpamHandle>) -> Result<Vec<String>, StoreError> {
    let bad = |cidr: &str| StoreError::Invalid {
        kind: Kind::IpamHandle,
        name: handle.name.clone(),
        reason: format!("{cidr:?} is not a block CIDR"),
    };
    handle
        .value
        .block
        .keys()
        .map(|cidr| {
            let net = cidr.parse().map_err(|_| bad(cidr))?;
            Ok(crate::BlockCidr::new(net).map_err(|_| bad(cidr))?.name())
        })
        .collect()
}

/// A read's result with not-found as `None`.
pub fn present<R>(got: Result<Stored<R>, StoreError>) -> Result<Option<Stored<R>>, StoreError> {
    match got {
        Ok(s) => Ok(Some(s)),
        Err(StoreError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

impl Kind {
    /// Every kind, in a fixed order.
    pub const ALL: [Kind; 6] = [
        Kind::IpPool,
        Kind::IpamBlock,
        Kind::BlockAffinity,
        Kind::IpamHandle,
        Kind::IpamConfig,
        Kind::IpReservation,
    ];

    /// The Kubernetes kind (`IPAMBlock`).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::IpPool => "IPPool",
            Kind::IpamBlock => "IPAMBlock",
            Kind::BlockAffinity => "BlockAffinity",
            Kind::IpamHandle => "IPAMHandle",
            Kind::IpamConfig => "IPAMConfig",
            Kind::IpReservation => "IPReservation",
        }
    }

    /// The Kubernetes plural resource name (`ipamblocks`).
    pub fn plural(self) -> &'static str {
        match self {
            Kind::IpPool => "ippools",
            Kind::IpamBlock => "ipamblocks",
            Kind::BlockAffinity => "blockaffinities",
            Kind::IpamHandle => "ipamhandles",
            Kind::IpamConfig => "ipamconfigs",
            Kind::IpReservation => "ipreservations",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Revision {
    /// A revision from a counter.
    pub fn from_u64(n: u64) -> Self {
        Revision(n.to_string())
    }
}

impl fmt::Display for Revision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Resource for IpPool {
    const KIND: Kind = Kind::IpPool;
}

impl Resource for IpamBlock {
    const KIND: Kind = Kind::IpamBlock;

    fn is_deleted(&self) -> bool {
        self.deleted
    }

    fn node(&self) -> Option<&str> {
        self.affinity
            .as_deref()
            .and_then(|a| a.strip_prefix("host:"))
    }

    fn room_hint(&self) -> Option<bool> {
        Some(self.has_room())
    }
}

impl Resource for BlockAffinity {
    const KIND: Kind = Kind::BlockAffinity;

    fn is_deleted(&self) -> bool {
        self.deleted
    }

    fn node(&self) -> Option<&str> {
        Some(&self.node)
    }
}

impl Resource for IpamHandle {
    const KIND: Kind = Kind::IpamHandle;

    fn is_deleted(&self) -> bool {
        self.deleted
    }
}

impl Resource for IpamConfig {
    const KIND: Kind = Kind::IpamConfig;
}

impl Resource for IpReservation {
    const KIND: Kind = Kind::IpReservation;
}
