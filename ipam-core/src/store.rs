//! The datastore contract: typed objects with revisions, and compare-and-swap writes.
//!
//! A backend stores the six resource kinds by name. Every write names the revision it
//! read; a moved revision is a [`StoreError::Conflict`], which only the allocator's retry
//! helper handles. Objects marked `deleted` are absent to every reader.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::model::{BlockAffinity, IpPool, IpReservation, IpamBlock, IpamConfig, IpamHandle};

/// What a datastore operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No live object has that name.
    #[error("{kind} {name:?} not found")]
    NotFound {
        /// The resource kind.
        kind: Kind,
        /// The object name.
        name: String,
    },
    /// A live object already has that name.
    #[error("{kind} {name:?} already exists")]
    AlreadyExists {
        /// The resource kind.
        kind: Kind,
        /// The object name.
        name: String,
    },
    /// The object's revision moved since it was read: read again and retry.
    #[error("{kind} {name:?} was changed by someone else")]
    Conflict {
        /// The resource kind.
        kind: Kind,
        /// The object name.
        name: String,
    },
    /// The datastore cannot be reached now; the same call may succeed later.
    #[error("datastore unavailable: {source}")]
    Unavailable {
        /// What the backend reported.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The backend refused the object or the request as malformed.
    #[error("invalid {kind} {name:?}: {reason}")]
    Invalid {
        /// The resource kind.
        kind: Kind,
        /// The object name.
        name: String,
        /// Why it was refused.
        reason: String,
    },
    /// The backend refused this client: credentials missing or wrong, or no permission for
    /// the request. Retrying cannot help until the configuration or the grants change.
    #[error("datastore refused the request: {source}")]
    Denied {
        /// What the backend reported.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Anything else the backend reported (I/O, decoding, protocol).
    #[error("datastore error: {source}")]
    Other {
        /// What the backend reported.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

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

/// Counts of datastore round trips, for benchmarks and cost checks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpCounts {
    /// Single-object reads.
    pub gets: u64,
    /// List reads (one per round trip, however many objects).
    pub lists: u64,
    /// Creates.
    pub creates: u64,
    /// Compare-and-swap updates.
    pub updates: u64,
    /// Compare-and-swap deletes.
    pub deletes: u64,
}

/// Atomic counters a backend embeds to implement [`Datastore::op_counts`].
#[derive(Debug, Default)]
pub struct OpCounter {
    gets: AtomicU64,
    lists: AtomicU64,
    creates: AtomicU64,
    updates: AtomicU64,
    deletes: AtomicU64,
}

/// One operation, for [`OpCounter::count`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// A get.
    Get,
    /// A list.
    List,
    /// A create.
    Create,
    /// An update.
    Update,
    /// A delete.
    Delete,
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

impl StoreError {
    /// Whether this is a CAS conflict (the only error the retry helper swallows).
    pub fn is_conflict(&self) -> bool {
        matches!(self, StoreError::Conflict { .. })
    }

    /// Whether a write lost a race with another writer: a conflict, or a create that found
    /// the object there, or an update that found it gone. A fresh read decides what next.
    pub fn is_lost_race(&self) -> bool {
        matches!(
            self,
            StoreError::Conflict { .. }
                | StoreError::AlreadyExists { .. }
                | StoreError::NotFound { .. }
        )
    }

    /// This error as a [`StoreError::Conflict`] on the same object, for a lost race the caller
    /// retries (see [`StoreError::is_lost_race`]); other errors are returned unchanged.
    pub fn into_conflict(self) -> StoreError {
        match self {
            StoreError::AlreadyExists { kind, name } | StoreError::NotFound { kind, name } => {
                StoreError::Conflict { kind, name }
            }
            other => other,
        }
    }

    /// Whether the object was absent.
    pub fn is_not_found(&self) -> bool {
        matches!(self, StoreError::NotFound { .. })
    }

    /// A NotFound for `R` named `name`.
    pub fn not_found<R: Resource>(name: &str) -> Self {
        StoreError::NotFound {
            kind: R::KIND,
            name: name.to_owned(),
        }
    }

    /// An AlreadyExists for `R` named `name`.
    pub fn already_exists<R: Resource>(name: &str) -> Self {
        StoreError::AlreadyExists {
            kind: R::KIND,
            name: name.to_owned(),
        }
    }

    /// A Conflict for `R` named `name`.
    pub fn conflict<R: Resource>(name: &str) -> Self {
        StoreError::Conflict {
            kind: R::KIND,
            name: name.to_owned(),
        }
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

impl OpCounts {
    /// Round trips that only read.
    pub fn reads(&self) -> u64 {
        self.gets + self.lists
    }

    /// Round trips that write.
    pub fn writes(&self) -> u64 {
        self.creates + self.updates + self.deletes
    }

    /// The counts accrued since `earlier`.
    pub fn since(&self, earlier: &OpCounts) -> OpCounts {
        OpCounts {
            gets: self.gets - earlier.gets,
            lists: self.lists - earlier.lists,
            creates: self.creates - earlier.creates,
            updates: self.updates - earlier.updates,
            deletes: self.deletes - earlier.deletes,
        }
    }
}

impl OpCounter {
    /// Counts one round trip.
    pub fn count(&self, op: Op) {
        let cell = match op {
            Op::Get => &self.gets,
            Op::List => &self.lists,
            Op::Create => &self.creates,
            Op::Update => &self.updates,
            Op::Delete => &self.deletes,
        };
        cell.fetch_add(1, Ordering::Relaxed);
    }

    /// The counts so far.
    pub fn snapshot(&self) -> OpCounts {
        OpCounts {
            gets: self.gets.load(Ordering::Relaxed),
            lists: self.lists.load(Ordering::Relaxed),
            creates: self.creates.load(Ordering::Relaxed),
            updates: self.updates.load(Ordering::Relaxed),
            deletes: self.deletes.load(Ordering::Relaxed),
        }
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
