//! Shared test machinery, run against every datastore from the files in `tests/tests/`.

pub mod apiserver;
pub mod certs;
pub mod conformance;
pub mod etcd;
pub mod etcd_server;
pub mod kubectl_suite;
pub mod model;
