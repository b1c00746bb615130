//! etcd v3 datastore for `ipam-core` (work in progress).
