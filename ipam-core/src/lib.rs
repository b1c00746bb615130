//! Calico-compatible block IPAM: the data model, the allocation rules and the datastore
//! contract, with no IO of its own.
//!
//! `ipam-core` decides; datastores store and front ends parse and print. Time comes in
//! through a [`Clock`], storage through a [`Datastore`], and nothing here reads the
//! environment, the network or files. Objects are wire-compatible with Calico's
//! `crd.projectcalico.org/v1` resources (see [`model`]).
//!
//! ```
//! # pollster::block_on(async {
//! use ipam_core::{AutoAssignArgs, HandleId, Ipam, IpPool, MemoryStore, NodeName};
//! let ipam = Ipam::new(MemoryStore::new(), ipam_core::SystemClock);
//! ipam.create_pool("default-ipv4-ippool", IpPool::new("10.244.0.0/16".parse().unwrap())).await.unwrap();
//! let args = AutoAssignArgs::new(NodeName::new("node-1").unwrap(), 1, 0)
//!     .with_handle(HandleId::new("k8s-pod-network.abc").unwrap());
//! let got = ipam.auto_assign(&args).await.unwrap();
//! assert_eq!(got.ipv4[0].prefix_len(), 26); // the block's prefix, as calico-ipam returns
//! // Asking for more than a pool can ever hold is refused, and nothing is kept.
//! let greedy = AutoAssignArgs::new(NodeName::new("node-2").unwrap(), 70_000, 0);
//! assert!(ipam.auto_assign(&greedy).await.is_err());
//! # });
//! ```

pub mod block;
pub mod check;
pub mod cidr;
pub mod clock;
pub mod error;
#[cfg(any(test, feature = "testing"))]
pub mod hooked;
mod ipam;
pub mod memory;
pub mod model;
pub mod names;
pub mod retry;
pub mod selector;
pub mod stats;
pub mod store;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use block::{BlockProblem, Cooldown, ReleaseOutcome};
pub use cidr::BlockCidr;
pub use clock::{Clock, ManualClock, SystemClock};
pub use error::{Error, Result};
pub use ipam::admin::{PoolCreate, special_range, validate_config, validate_pool};
pub use ipam::{
    Allocation, Assigned, AutoAssignArgs, BlockUsage, EnsuredPools, Family, Ipam, Labels,
    LabelsFromStore, PoolUsage, ReleaseRequest, ReleasedAffinities, Usage, WantedPool,
};
pub use memory::MemoryStore;
pub use model::{
    AffinityState, AllocationAttribute, AssignmentMode, BlockAffinity, IntendedUse, IpPool,
    IpReservation, IpamBlock, IpamConfig, IpamHandle,
};
pub use names::{HandleId, NodeName};
pub use retry::MAX_ATTEMPTS;
pub use selector::Selector;
pub use store::{
    BatchWrite, Datastore, HandleSnapshot, Kind, Labelled, NodeSnapshot, OpCounts, Resource,
    Revision, Scope, StoreError, Stored, Write,
};
