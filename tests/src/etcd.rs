//! A real etcd server for tests: started on free loopback ports, stopped on drop.
//!
//! The process management lives in [`crate::etcd_server`] so that the etcd benchmark can use it
//! too; this module adds what tests want: a panic with a clear message (never a skip) when
//! the binary is missing, and stores with short timeouts under a prefix of their own.

// A failed start is a failed test, which is what these helpers are for.
#![allow(clippy::expect_used)]

use std::time::Duration;

use ipam_etcd::{EtcdConfig, EtcdStore};

pub use crate::etcd_server::{LocalEtcd as EtcdServer, ServerError};

/// Starts an etcd server, or panics saying why (missing binary, exited, never healthy).
pub fn start() -> EtcdServer {
    match EtcdServer::start() {
        Ok(s) => s,
        Err(e) => panic!("cannot run the etcd tests: {e}"),
    }
}

/// Settings for a store on `server` under `prefix`, with timeouts short enough for tests.
pub fn config(server: &EtcdServer, prefix: &str) -> EtcdConfig {
    EtcdConfig::new([server.endpoint()])
        .with_prefix(prefix)
        .with_timeouts(Duration::from_secs(2), Duration::from_secs(5))
}

/// A store on `server` under `prefix`.
pub async fn store(server: &EtcdServer, prefix: &str) -> EtcdStore {
    EtcdStore::connect(config(server, prefix))
        .await
        .expect("connect to the test etcd")
}

/// A fresh server and a store on it: one per test, so tests share nothing.
pub async fn fresh() -> (EtcdStore, EtcdServer) {
    let server = start();
    let store = store(&server, "/ipam-test/").await;
    (store, server)
}
