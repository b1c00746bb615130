//! The CNI IPAM plugin (`ipam-cni`) and the operator CLI (`ipamctl`).
//!
//! Both are thin: they parse their input, pick a datastore, call `ipam-core`, and print.

pub mod cni;
pub mod ctl;
pub mod datastore;
