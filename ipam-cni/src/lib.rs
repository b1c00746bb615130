//! The CNI IPAM plugin (`ipam-cni`): it parses the runtime's request, opens the datastore
//! the config names, calls `ipam-core`, and prints the CNI result or error.
//!
//! It links only what a CNI call needs; the operator CLI is the `ipamctl` crate.

pub mod cni;
