//! `ipamctl serve` as a real process: read-only by default, writes only with the token or
//! over the Unix socket from the owner, TLS (curl and kubectl), plain HTTP only on loopback.
#![allow(clippy::unwrap_used)]

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use ipam_core::{IpPool, IpamHandle};
use serde_json::json;
use support::Fixture;
use support::server::{Server, certificates, curl, curl_as, refused_at_start, tool, write_mode};

const TOKEN: &str = "0123456789abcdef-test-token";
const NOBODY: u32 = 65534;

fn dir(fx: &Fixture) -> PathBuf {
    fx.db.parent().unwrap().to_owned()
}

fn token_file(fx: &Fixture, mode: u32) -> String {
    let path = dir(fx).join("token");
    write_mode(&path, &format!("{TOKEN}\n"), mode);
    path.display().to_string()
}

fn pool_body(name: &str, cidr: &str, block_size: u8) -> String {
    json!({
        "apiVersion": "crd.projectcalico.org/v1", "kind": "IPPool",
        "metadata": {"name": name},
        "spec": {"cidr": cidr, "blockSize": block_size},
    })
    .to_string()
}

fn post(url: &str, body: &str, extra: &[&str]) -> support::server::Reply {
    let mut args = vec![
        "-X",
        "POST",
        "-H",
        "Content-Type: application/json",
        "-d",
        body,
    ];
    args.extend_from_slice(extra);
    curl(&args, url)
}

/// The state of the store, compared before and after refused writes.
fn snapshot(fx: &Fixture) -> String {
    format!(
        "{:?}{:?}{:?}",
        fx.list::<IpPool>(),
        fx.list::<ipam_core::IpamBlock>(),
        fx.list::<IpamHandle>()
    )
}

#[test]
fn a_read_only_server_answers_reads_and_refuses_writes_with_403() {
    let fx = Fixture::new();
    fx.pool("10.0.0.0/24", 26);
    fx.assign("node-1", 1, "c1", "pod-1");
    let server = Server::start(&fx, &["--listen", "127.0.0.1:0"]);
    let pools = format!("{}/apis/crd.projectcalico.org/v1/ippools", server.url);
    let read = curl(&[], &pools);
    assert_eq!(read.code, 200, "{}", read.body);
    assert_eq!(read.json()["items"][0]["metadata"]["name"], "p");

    let before = snapshot(&fx);
    let create = post(&pools, &pool_body("q", "10.1.0.0/24", 26), &[]);
    assert_eq!(create.code, 403, "{}", create.body);
    assert_eq!(create.json()["kind"], "Status");
    assert_eq!(create.json()["reason"], "Forbidden");
    let handle = format!(
        "{}/apis/crd.projectcalico.org/v1/ipamhandles/k8s-pod-network.c1",
        server.url
    );
    // A token does not open a read-only server either.
    let auth = format!("Authorization: Bearer {TOKEN}");
    let delete = curl(&["-X", "DELETE", "-H", &auth], &handle);
    assert_eq!(delete.code, 403, "{}", delete.body);
    assert_eq!(snapshot(&fx), before);
}

#[test]
fn writes_need_the_right_bearer_token() {
    let fx = Fixture::new();
    let token = token_file(&fx, 0o600);
    let server = Server::start(
        &fx,
        &[
            "--listen",
            "127.0.0.1:0",
            "--allow-writes",
            "--token-file",
            &token,
        ],
    );
    let pools = format!("{}/apis/crd.projectcalico.org/v1/ippools", server.url);
    let body = pool_body("q", "10.1.0.0/24", 26);

    let anonymous = post(&pools, &body, &[]);
    assert_eq!(anonymous.code, 401, "{}", anonymous.body);
    assert_eq!(anonymous.json()["reason"], "Unauthorized");
    let wrong = post(
        &pools,
        &body,
        &["-H", "Authorization: Bearer not-the-token"],
    );
    assert_eq!(wrong.code, 401, "{}", wrong.body);
    let almost = format!("Authorization: Bearer {TOKEN}x");
    assert_eq!(post(&pools, &body, &["-H", &almost]).code, 401);
    assert!(
        fx.list::<IpPool>().is_empty(),
        "a refused write stored something"
    );

    let auth = format!("Authorization: Bearer {TOKEN}");
    let created = post(&pools, &body, &["-H", &auth]);
    assert_eq!(created.code, 201, "{}", created.body);
    let stored = fx.list::<IpPool>();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].value.cidr.to_string(), "10.1.0.0/24");
    // Reads stay anonymous.
    assert_eq!(curl(&[], &pools).code, 200);
}

#[test]
fn a_token_file_others_can_read_is_refused_at_start() {
    let fx = Fixture::new();
    let token = token_file(&fx, 0o644);
    let (code, stderr) = refused_at_start(
        &fx,
        &[
            "--listen",
            "127.0.0.1:0",
            "--allow-writes",
            "--token-file",
            &token,
        ],
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("0644") && stderr.contains("0600"),
        "{stderr}"
    );
}

#[test]
fn allowing_writes_without_any_credential_is_refused_at_start() {
    let fx = Fixture::new();
    let (code, stderr) = refused_at_start(&fx, &["--listen", "127.0.0.1:0", "--allow-writes"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--token-file"), "{stderr}");
}

#[test]
fn plain_http_off_loopback_is_refused_at_start() {
    let fx = Fixture::new();
    let (code, stderr) = refused_at_start(&fx, &["--listen", "0.0.0.0:0"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("without TLS"), "{stderr}");
}

fn socket_dir_for_nobody(fx: &Fixture) -> PathBuf {
    // The test's folder must be traversable by uid 65534 for it to reach the socket at all.
    let d = dir(fx);
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o711)).unwrap();
    d.join("api.sock")
}

fn unix_post(uid: Option<u32>, sock: &Path, body: &str) -> support::server::Reply {
    let s = sock.display().to_string();
    let args = [
        "--unix-socket",
        &s,
        "-X",
        "POST",
        "-H",
        "Content-Type: application/json",
        "-d",
        body,
    ];
    curl_as(
        uid,
        &args,
        "http://localhost/apis/crd.projectcalico.org/v1/ippools",
    )
}

#[test]
fn the_unix_socket_takes_writes_from_its_owner_only() {
    let fx = Fixture::new();
    let sock = socket_dir_for_nobody(&fx);
    let s = sock.display().to_string();
    let _server = Server::start(
        &fx,
        &[
            "--listen",
            "127.0.0.1:0",
            "--allow-writes",
            "--listen-unix",
            &s,
        ],
    );
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the socket should be created 0600");

    // uid 65534 cannot even connect to a 0600 socket of root's.
    let nobody = unix_post(Some(NOBODY), &sock, &pool_body("n", "10.9.0.0/24", 26));
    assert_eq!(nobody.code, 0, "{}", nobody.body);
    assert_ne!(nobody.curl_exit, Some(0));
    // With the mode opened up, the peer credentials still refuse its write.
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    let nobody = unix_post(Some(NOBODY), &sock, &pool_body("n", "10.9.0.0/24", 26));
    assert_eq!(nobody.code, 401, "{}", nobody.body);
    assert!(fx.list::<IpPool>().is_empty());

    let owner = unix_post(None, &sock, &pool_body("o", "10.8.0.0/24", 26));
    assert_eq!(owner.code, 201, "{}", owner.body);
    let names: Vec<_> = fx.list::<IpPool>().into_iter().map(|p| p.name).collect();
    assert_eq!(names, ["o"]);
}

#[test]
fn tls_serves_curl_and_kubectl_even_on_a_wildcard_address() {
    let fx = Fixture::new();
    fx.pool("10.0.0.0/24", 26);
    let d = dir(&fx);
    let (ca, cert, key) = certificates(&d);
    let token = token_file(&fx, 0o600);
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    let server = Server::start(
        &fx,
        &[
            "--listen",
            "0.0.0.0:0",
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--allow-writes",
            "--token-file",
            &token,
        ],
    );
    let port = server.url.rsplit(':').next().unwrap();
    // Only loopback traffic: the wildcard listener is reached through 127.0.0.1.
    let base = format!("https://127.0.0.1:{port}");
    let ca_s = ca.display().to_string();
    let read = curl(
        &["--cacert", &ca_s],
        &format!("{base}/apis/crd.projectcalico.org/v1/ippools"),
    );
    assert_eq!(read.code, 200, "{}", read.body);
    let plain = curl(&[], &format!("http://127.0.0.1:{port}/version"));
    assert_ne!(
        plain.code, 200,
        "plain HTTP should not be served on the TLS port"
    );

    let kubectl = |args: &[&str]| {
        std::process::Command::new(tool("kubectl"))
            .args([
                "--server",
                &base,
                "--certificate-authority",
                &ca_s,
                "--token",
                TOKEN,
            ])
            .args(["--kubeconfig", "/dev/null"])
            .args(args)
            .output()
            .unwrap()
    };
    let got = kubectl(&["get", "ippools", "-o", "name"]);
    let stdout = String::from_utf8_lossy(&got.stdout);
    assert!(
        got.status.success(),
        "{}",
        String::from_utf8_lossy(&got.stderr)
    );
    assert_eq!(stdout.trim(), "ippool.crd.projectcalico.org/p");
    let manifest = d.join("pool.json");
    std::fs::write(&manifest, pool_body("q", "10.1.0.0/24", 26)).unwrap();
    let m = manifest.display().to_string();
    // This server publishes no OpenAPI schema for kubectl to validate against.
    let created = kubectl(&["create", "--validate=false", "-f", &m]);
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    assert_eq!(fx.list::<IpPool>().len(), 2);
}
