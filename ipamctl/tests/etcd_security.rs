//! `ipamctl` on a real etcd that requires TLS client certificates, and on one with
//! authentication on, through its `--etcd-*` flags: with them it works, without them it
//! fails with a clear error, and the password is never printed.

#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output};

use ipam_tests::certs::Certificates;
use ipam_tests::etcd_server::{ClientTls, LocalEtcd};

fn ipamctl(datastore: &str, flags: &[&str], args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ipamctl"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .arg("--datastore")
        .arg(datastore)
        .args(flags)
        .args(args)
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

const CREATE: &[&str] = &["pool", "create", "p", "--cidr", "10.96.0.0/24"];
const LIST: &[&str] = &["pool", "list"];

#[test]
fn client_certificate_flags() {
    let dir = tempfile::tempdir().unwrap();
    let certs = Certificates::new(dir.path());
    let (cert, key) = certs.client(dir.path(), "ipamctl");
    let server = LocalEtcd::start_tls(ClientTls {
        cert: certs.server_cert.clone(),
        key: certs.server_key.clone(),
        client_ca: certs.ca.clone(),
    })
    .unwrap_or_else(|e| panic!("etcd with TLS: {e}"));
    let spec = format!("etcdv3:{}", server.endpoint());
    let (ca, cert, key) = (
        certs.ca.display().to_string(),
        cert.display().to_string(),
        key.display().to_string(),
    );
    let flags = [
        "--etcd-ca-cert",
        &ca,
        "--etcd-cert",
        &cert,
        "--etcd-key",
        &key,
    ];
    let created = ipamctl(&spec, &flags, CREATE);
    assert!(created.status.success(), "{}", text(&created));
    let listed = ipamctl(&spec, &flags, LIST);
    assert!(text(&listed).contains("10.96.0.0/24"), "{}", text(&listed));

    let without = ipamctl(&spec, &["--etcd-ca-cert", &ca], LIST);
    assert!(
        !without.status.success(),
        "listed without a client certificate"
    );
    assert!(!text(&without).contains("10.96.0.0/24"));
}

#[test]
fn password_file_flag() {
    let server = ipam_tests::etcd::start();
    let password = "ipamctl-s3cret";
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(ipam_tests::etcd::enable_auth(
        &server,
        "ops",
        password,
        ipam_tests::etcd::DEFAULT_PREFIX,
    ));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("password");
    std::fs::write(&file, format!("{password}\n")).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let file = file.display().to_string();
    let spec = format!("etcdv3:{}", server.endpoint());
    let flags = ["--etcd-username", "ops", "--etcd-password-file", &file];

    let created = ipamctl(&spec, &flags, CREATE);
    assert!(created.status.success(), "{}", text(&created));
    let listed = ipamctl(&spec, &flags, LIST);
    assert!(text(&listed).contains("10.96.0.0/24"), "{}", text(&listed));

    let anonymous = ipamctl(&spec, &[], LIST);
    assert!(!anonymous.status.success(), "listed without credentials");
    assert!(text(&anonymous).contains("refused"), "{}", text(&anonymous));
    for out in [&created, &listed, &anonymous] {
        assert!(!text(out).contains(password), "the password was printed");
    }
}
