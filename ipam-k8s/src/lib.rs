//! The Kubernetes face of the IPAM: Calico's `crd.projectcalico.org/v1` CustomResourceDefinitions
//! and [`KubeStore`], the datastore that keeps IPAM state in a Kubernetes API server.
//!
//! - [`crds`] builds the CRDs (`ipamctl crds` prints them).
//! - [`resource`] names the kinds the Kubernetes way (plurals, labels, uids, printer
//!   columns); the Kubernetes-style API over any datastore (`ipamctl serve`) is the
//!   `ipam-apiserver` crate, built on it.
//! - [`KubeStore`] implements the datastore contract with kube-rs: revisions are
//!   `resourceVersion`s, writes are compare-and-swap PUTs, deletes carry preconditions.
//!
//! The spec types are `ipam_core::model`'s; nothing here defines a second copy of them.

mod client;
pub mod resource;
pub mod schema;
mod snapshot;
pub mod store;
mod upgrade;

pub use resource::{GROUP, NODE_LABEL, ResourceDef, VERSION};
pub use schema::crds;
pub use store::KubeStore;

/// What this crate's own setup calls can fail with (datastore calls use `StoreError`).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kubeconfig file could not be read or parsed.
    #[error("kubeconfig {path}: {source}")]
    Kubeconfig {
        /// The file.
        path: String,
        /// What went wrong.
        #[source]
        source: kube::config::KubeconfigError,
    },
    /// The in-cluster service account configuration is missing or unreadable.
    #[error("in-cluster configuration: {0}")]
    InCluster(#[source] kube::config::InClusterError),
    /// A client could not be built from the configuration.
    #[error("building the Kubernetes client: {0}")]
    Client(#[source] kube::Error),
    /// The API server URL is malformed.
    #[error("API server URL {url:?}: {source}")]
    InvalidUrl {
        /// The URL given.
        url: String,
        /// Why it does not parse.
        #[source]
        source: http::uri::InvalidUri,
    },
}

/// This crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
