//! The IPAM controller: what Calico's kube-controllers do for IPAM.
//!
//! It watches the cluster's Pods and Nodes (kube-rs watchers feeding reflectors: one list,
//! then a watch, no polling) and, while it holds a `coordination.k8s.io/v1` Lease, releases
//! on every pass (`interval`):
//!
//! - the addresses of pods that no longer exist: an allocation that names a pod
//!   (`namespace` and `pod` attributes, as our plugin and `calico-ipam` write them) whose
//!   pod is not in the cluster;
//! - the affinities and empty blocks of nodes that no longer exist.
//!
//! Nothing is released on one sighting: the same allocation (handle and sequence number) or
//! the same affinity and block must be seen so twice, at least `grace` apart, and the pod
//! or node is asked for once more from the API server just before the release. An address
//! allocated inside the grace period (a pod being created) is therefore never touched, and
//! one whose pod exists never is. The judging is `ipam_core::check`'s, the waiting
//! `ipam_core::check::Observations`, the releases the allocator's own compare-and-swap
//! writes guarded by sequence number and handle.
//!
//! It serves Prometheus metrics (`ipam-metrics`) on `/metrics`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub mod cluster;
pub mod controller;
pub mod gc;
pub mod lease;
pub mod serve;

pub use controller::{Controller, Status};
pub use lease::LeaseSettings;

/// What the controller can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A datastore read or write failed.
    #[error("datastore: {0}")]
    Store(#[from] ipam_core::StoreError),
    /// The allocator refused or failed.
    #[error("ipam: {0}")]
    Ipam(#[from] ipam_core::Error),
    /// The datastore could not be chosen or opened.
    #[error(transparent)]
    Datastore(#[from] ipam_datastore::Error),
    /// A request to the Kubernetes API failed.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The kubeconfig for the cluster's API could not be read.
    #[error("kubeconfig {path}: {source}")]
    Kubeconfig {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        #[source]
        source: kube::config::KubeconfigError,
    },
    /// No kubeconfig was named and none was found in the environment.
    #[error("no Kubernetes configuration (in-cluster, $KUBECONFIG or ~/.kube/config): {0}")]
    InferConfig(#[source] kube::config::InferConfigError),
    /// The metrics listener could not be opened.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// A metrics listener off loopback was asked for without a bearer token file.
    #[error("--metrics-listen {addr} is not a loopback address: it needs --metrics-token-file")]
    UnauthenticatedListener {
        /// The address.
        addr: SocketAddr,
    },
    /// The metrics listener's token or TLS files are unusable, or serving failed.
    #[error(transparent)]
    Serve(#[from] ipam_apiserver::Error),
    /// The cluster's Pods and Nodes could not be listed before the deadline.
    #[error("the Pod and Node watches did not finish their first list within {0:?}")]
    NotSynced(Duration),
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How the controller runs.
#[derive(Clone, Debug)]
pub struct Settings {
    /// How long something must look abandoned, unchanged, before it is released.
    pub grace: Duration,
    /// Time between passes.
    pub interval: Duration,
    /// The leader lease.
    pub lease: LeaseSettings,
}
