//! Kubernetes datastore for `ipam-core` (work in progress).
