//! A real etcd server for tests: started on free loopback ports, stopped on drop.
//!
//! The process management lives in [`crate::etcd_server`] so that the etcd benchmark can use it
//! too; this module adds what tests want: a panic with a clear message (never a skip) when
//! the binary is missing, and stores with short timeouts under a prefix of their own.

// A failed start is a failed test, which is what these helpers are for.
#![allow(clippy::expect_used)]

use std::time::Duration;

use ipam_etcd::{EtcdConfig, EtcdStore};

/// The store's default key prefix, for tests that limit a role to it.
pub use ipam_etcd::DEFAULT_PREFIX;

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

/// Turns on `server`'s authentication: a `root` user (etcd needs one; its password is
/// returned) and `user` with `password`, whose one role may read and write only the keys
/// under `prefix`. From then on the server refuses requests without credentials.
pub async fn enable_auth(server: &EtcdServer, user: &str, password: &str, prefix: &str) -> String {
    use etcd_client::{Client, Permission};
    let root_password = format!("root-{}", std::process::id());
    let mut client = Client::connect([server.endpoint()], None)
        .await
        .expect("connect to the test etcd");
    let steps = async {
        client
            .user_add("root", root_password.as_str(), None)
            .await?;
        client.user_grant_role("root", "root").await?;
        client.role_add("ipam").await?;
        let own = Permission::read_write(prefix).with_prefix();
        client.role_grant_permission("ipam", own).await?;
        client.user_add(user, password, None).await?;
        client.user_grant_role(user, "ipam").await?;
        client.auth_enable().await?;
        Ok::<(), etcd_client::Error>(())
    };
    steps.await.expect("enable etcd's authentication");
    root_password
}
