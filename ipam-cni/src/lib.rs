//! The CNI IPAM plugin and the `ipamctl` operator CLI (work in progress).
