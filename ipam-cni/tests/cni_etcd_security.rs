//! The plugin on a real etcd that protects itself, configured with Calico's keys: TLS with
//! client certificates required (`etcd_ca_cert_file`, `etcd_cert_file`, `etcd_key_file`),
//! and authentication by user and password (`etcd_username`, `etcd_password_file`, the
//! user's role limited to the store's prefix). Without the right credentials a request
//! fails and stores nothing: code 11 (try again later) when the connection itself fails,
//! code 7 (invalid network config) when etcd refuses the configured user or password, or
//! that no user is configured, since retrying cannot help; no password appears in the
//! output.

#![allow(clippy::unwrap_used)]

mod cni_support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use cni_support::{Reply, container_env, run};
use ipam_core::{HandleId, IpPool, Ipam, SystemClock};
use ipam_etcd::{DEFAULT_PREFIX, EtcdConfig, EtcdStore};
use ipam_tests::certs::Certificates;
use ipam_tests::etcd_server::{ClientTls, LocalEtcd};
use serde_json::{Value, json};

const POOL: &str = "10.97.0.0/24";

fn conf(endpoint: &str, keys: Value) -> Value {
    let mut conf = json!({
        "cniVersion": "1.1.0",
        "name": "secure",
        "type": "bridge",
        "datastore_type": "etcdv3",
        "etcd_endpoints": endpoint,
        "nodename": "node-1",
        "ipam": {"type": "ipam-cni", "ipv4_pools": [POOL]},
    });
    cni_support::merge(&mut conf, keys);
    conf
}

fn add(conf: &Value, id: &str) -> Reply {
    run(&container_env("ADD", id, "eth0"), &conf.to_string())
}

/// The addresses `handle` holds, read by an administrator's store.
fn held(runtime: &tokio::runtime::Runtime, ipam: &Ipam<EtcdStore>, handle: &str) -> usize {
    let id = HandleId::new(handle).unwrap();
    runtime
        .block_on(ipam.ips_by_handle(&id))
        .map_or(0, |ips| ips.len())
}

fn admin(runtime: &tokio::runtime::Runtime, config: EtcdConfig) -> Ipam<EtcdStore> {
    runtime.block_on(async {
        let store = EtcdStore::connect(config).await.unwrap();
        let ipam = Ipam::new(store, SystemClock);
        let pool = IpPool::new(POOL.parse().unwrap());
        ipam.create_pool("secure-pool", pool).await.unwrap();
        ipam
    })
}

#[test]
fn tls_with_client_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let certs = Certificates::new(dir.path());
    let (cert, key) = certs.client(dir.path(), "ipam-cni");
    let tls = ClientTls {
        cert: certs.server_cert.clone(),
        key: certs.server_key.clone(),
        client_ca: certs.ca.clone(),
    };
    let server = LocalEtcd::start_tls(tls).unwrap_or_else(|e| panic!("etcd with TLS: {e}"));
    let endpoint = server.endpoint();
    assert!(endpoint.starts_with("https://"), "{endpoint}");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut config = EtcdConfig::new([endpoint.clone()]);
    config.ca_cert_file = Some(certs.ca.clone());
    config.cert_file = Some(cert.clone());
    config.key_file = Some(key.clone());
    let ipam = admin(&runtime, config);

    let keys = json!({
        "etcd_ca_cert_file": certs.ca,
        "etcd_cert_file": cert,
        "etcd_key_file": key,
    });
    let good = conf(&endpoint, keys);
    let ips = add(&good, "tls-ok").ips();
    assert!(ips[0].starts_with("10.97.0."), "{ips:?}");
    assert_eq!(held(&runtime, &ipam, "secure.tls-ok"), 1);

    // The server's CA alone is not enough: the server wants a client certificate.
    let no_client_cert = conf(&endpoint, json!({"etcd_ca_cert_file": certs.ca}));
    assert_eq!(add(&no_client_cert, "no-cert").code(), 11);
    // A client certificate from another CA is refused as well.
    let other_dir = tempfile::tempdir().unwrap();
    let other = Certificates::new(other_dir.path());
    let (stranger_cert, stranger_key) = other.client(other_dir.path(), "stranger");
    let stranger = conf(
        &endpoint,
        json!({"etcd_ca_cert_file": certs.ca, "etcd_cert_file": stranger_cert,
               "etcd_key_file": stranger_key}),
    );
    assert_eq!(add(&stranger, "stranger").code(), 11);
    // Plain HTTP to the TLS listener fails too.
    let plain = conf(&endpoint.replace("https://", "http://"), json!({}));
    assert_eq!(add(&plain, "plain").code(), 11);
    for handle in ["secure.no-cert", "secure.stranger", "secure.plain"] {
        assert_eq!(held(&runtime, &ipam, handle), 0, "{handle} was stored");
    }

    let del = run(&container_env("DEL", "tls-ok", "eth0"), &good.to_string());
    del.ok();
    assert_eq!(held(&runtime, &ipam, "secure.tls-ok"), 0);
}

fn password_file(dir: &Path, name: &str, password: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("{password}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

#[test]
fn user_and_password_file() {
    let server = ipam_tests::etcd::start();
    let endpoint = server.endpoint();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let password = "s3cret-ipam-password";
    runtime.block_on(ipam_tests::etcd::enable_auth(
        &server,
        "ipam",
        password,
        DEFAULT_PREFIX,
    ));
    let config = EtcdConfig::new([endpoint.clone()]).with_credentials("ipam", password.to_owned());
    let ipam = admin(&runtime, config);

    let dir = tempfile::tempdir().unwrap();
    let right = password_file(dir.path(), "right", password);
    let good = conf(
        &endpoint,
        json!({"etcd_username": "ipam", "etcd_password_file": right}),
    );
    let ips = add(&good, "auth-ok").ips();
    assert!(ips[0].starts_with("10.97.0."), "{ips:?}");
    assert_eq!(held(&runtime, &ipam, "secure.auth-ok"), 1);

    let wrong_password = "not-the-password-42";
    let wrong = password_file(dir.path(), "wrong", wrong_password);
    let bad = conf(
        &endpoint,
        json!({"etcd_username": "ipam", "etcd_password_file": wrong}),
    );
    let refused = add(&bad, "wrong");
    assert_eq!(refused.code(), 7, "{refused:?}");
    assert!(
        refused.stdout.contains("authentication failed"),
        "{refused:?}"
    );
    for secret in [password, wrong_password] {
        let said = format!("{}{}", refused.stdout, refused.stderr);
        assert!(!said.contains(secret), "a password in the output: {said}");
    }
    let anonymous = conf(&endpoint, json!({}));
    let anonymous = add(&anonymous, "anonymous");
    assert_eq!(anonymous.code(), 7, "{anonymous:?}");
    assert!(anonymous.stdout.contains("refused"), "{anonymous:?}");
    for handle in ["secure.wrong", "secure.anonymous"] {
        assert_eq!(held(&runtime, &ipam, handle), 0, "{handle} was stored");
    }

    run(&container_env("DEL", "auth-ok", "eth0"), &good.to_string()).ok();
    assert_eq!(held(&runtime, &ipam, "secure.auth-ok"), 0);
}
