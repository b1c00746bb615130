//! A real kube-apiserver for tests: built from source by `scripts/build-peers`, started on a
//! free loopback port over its own etcd, with token users, RBAC and the project's CRDs.
//!
//! [`KubeApiServer::start`] starts etcd (the one `build-peers` builds, 3.6: Debian's 3.4.23
//! lacks RequestWatchProgress, so streaming-list watches fail on it) on free loopback ports with a data directory in memory, then kube-apiserver on `127.0.0.1` with a
//! temporary certificate directory (it writes its own self-signed serving certificate and CA
//! there), a service-account key made with `openssl`, a token file holding the users, and
//! `--authorization-mode=Node,RBAC`. It waits for `/readyz` (at most
//! [`READY_WITHIN`], then panics with the end of the server's log) and hands out, per user, a
//! kubeconfig file (the token and the server's CA), a `kube::Client` and a `KubeStore`. Drop
//! kills and reaps both processes.
//!
//! Startup takes about 4-6 s on the 2-core machine (etcd well under 1 s, kube-apiserver the
//! rest, mostly its post-start hooks), so a test file starts one server and runs its checks
//! on it one after another, clearing the IPAM objects between them (`delete_all_objects`).
//!
//! Binaries: `KUBE_APISERVER_BIN`, `KUBECTL_BIN` and `KUBE_ETCD_BIN`, else
//! `${IPAM_PEERS_DIR:-/var/cache/ipam-rs/peers}/current/bin/{kube-apiserver,kubectl,etcd}`.
//! A missing one is a failed test whose message says to run `scripts/build-peers`.
//! `IPAM_KUBE_APISERVER_ARGS` adds flags to kube-apiserver (for experiments).

// A failed start is a failed test, which is what these helpers are for.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::etcd_server::LocalEtcd;
use ipam_k8s::KubeStore;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, ListParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde_json::Value;

// The IPAM objects on a running server: CRDs, clean slates, request counts.
mod objects;
pub use objects::reads_and_writes;

/// How long kube-apiserver may take to answer `/readyz` with `ok`.
pub const READY_WITHIN: Duration = Duration::from_secs(90);
/// Ports tried for the API server before giving up (another process may take a port
/// between our probe and the server's bind).
const PORT_ATTEMPTS: usize = 3;
/// kube-apiserver's output, in its directory.
const LOG: &str = "kube-apiserver.log";

/// The user in `system:masters`: may do anything.
pub const ADMIN: &str = "admin";
/// The CNI plugin's user: no rights until a test binds it a role (`deploy/rbac.yaml`'s
/// `ipam-cni` ClusterRole).
pub const CNI: &str = "ipam-cni";
/// An authenticated user with no rights at all.
pub const NOBODY: &str = "nobody";

/// The IPAM kinds' resource names (plural), as the CRDs serve them.
pub const PLURALS: [&str; 6] = [
    "ippools",
    "ipamblocks",
    "blockaffinities",
    "ipamhandles",
    "ipamconfigs",
    "ipreservations",
];

/// A user of the token file.
#[derive(Clone, Debug)]
pub struct User {
    /// The user name.
    pub name: String,
    /// Its groups (beside `system:authenticated`, which the server adds).
    pub groups: Vec<String>,
    /// Its bearer token.
    pub token: String,
}

/// A running etcd and kube-apiserver; both are killed when this is dropped.
pub struct KubeApiServer {
    // Dropped after the API server is killed (see `Drop`).
    etcd: Option<LocalEtcd>,
    child: Option<Child>,
    dir: tempfile::TempDir,
    port: u16,
    users: Vec<User>,
    kubectl: PathBuf,
    /// How long the start took, etcd included.
    pub startup: Duration,
}

/// The binary named by `env`, else `name` in the `build-peers` cache; panics when missing.
pub fn peer_binary(env: &str, name: &str) -> PathBuf {
    let path = match std::env::var_os(env) {
        Some(p) => PathBuf::from(p),
        None => peers_dir().join("bin").join(name),
    };
    assert!(
        path.is_file(),
        "no {name} at {}: run scripts/build-peers (it builds kube-apiserver, kubectl and \
         etcd from tests/peers into ${{IPAM_PEERS_DIR:-/var/cache/ipam-rs/peers}}), or set {env}",
        path.display()
    );
    path
}

/// `${IPAM_PEERS_DIR:-/var/cache/ipam-rs/peers}/current`.
fn peers_dir() -> PathBuf {
    std::env::var_os("IPAM_PEERS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/ipam-rs/peers"))
        .join("current")
}

/// The kubectl built by `scripts/build-peers` (or `KUBECTL_BIN`); panics when missing.
pub fn kubectl_binary() -> PathBuf {
    peer_binary("KUBECTL_BIN", "kubectl")
}

impl KubeApiServer {
    /// Starts a server with the users [`ADMIN`], [`CNI`] and [`NOBODY`].
    pub async fn start() -> KubeApiServer {
        KubeApiServer::start_with_users(&[]).await
    }

    /// Starts a server with the default users and `extra` ones (name, groups).
    pub async fn start_with_users(extra: &[(&str, &[&str])]) -> KubeApiServer {
        let begun = Instant::now();
        let apiserver = peer_binary("KUBE_APISERVER_BIN", "kube-apiserver");
        let kubectl = kubectl_binary();
        let etcd = match LocalEtcd::start_binary(&peer_binary("KUBE_ETCD_BIN", "etcd")) {
            Ok(e) => e,
            Err(e) => panic!("cannot start etcd for kube-apiserver: {e}"),
        };
        let dir = tempfile::Builder::new()
            .prefix("ipam-kube-apiserver-")
            .tempdir()
            .expect("a temporary directory");
        let mut users = vec![
            user(ADMIN, &["system:masters"]),
            user(CNI, &[]),
            user(NOBODY, &[]),
        ];
        users.extend(extra.iter().map(|(n, g)| user(n, g)));
        write_token_file(&dir.path().join("tokens.csv"), &users);
        make_service_account_key(&dir.path().join("sa.key"));

        let mut server = KubeApiServer {
            etcd: Some(etcd),
            child: None,
            dir,
            port: 0,
            users,
            kubectl,
            startup: Duration::ZERO,
        };
        let mut last_log = String::new();
        for _ in 0..PORT_ATTEMPTS {
            server.port = free_port();
            server.child = Some(server.launch(&apiserver));
            match server.wait_ready().await {
                Ok(()) => {
                    server.startup = begun.elapsed();
                    eprintln!(
                        "kube-apiserver ready on {} after {:.1?}",
                        server.url(),
                        server.startup
                    );
                    return server;
                }
                Err(log) if log.contains("address already in use") => {
                    server.kill();
                    last_log = log;
                }
                Err(log) => {
                    server.kill();
                    panic!("kube-apiserver did not become ready: {log}");
                }
            }
        }
        panic!("kube-apiserver found no free port; its log ends:\n{last_log}");
    }

    fn launch(&self, binary: &Path) -> Child {
        let d = self.dir.path();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(d.join(LOG))
            .expect("kube-apiserver's log file");
        let log2 = log.try_clone().expect("kube-apiserver's log file");
        let sa = d.join("sa.key");
        let etcd = self.etcd.as_ref().expect("etcd runs").endpoint();
        Command::new(binary)
            .arg(format!("--etcd-servers={etcd}"))
            .arg("--bind-address=127.0.0.1")
            .arg("--advertise-address=127.0.0.1")
            .arg(format!("--secure-port={}", self.port))
            .arg(format!("--cert-dir={}", d.join("certs").display()))
            .arg(format!(
                "--token-auth-file={}",
                d.join("tokens.csv").display()
            ))
            .arg(format!("--service-account-key-file={}", sa.display()))
            .arg(format!(
                "--service-account-signing-key-file={}",
                sa.display()
            ))
            .arg("--service-account-issuer=https://kubernetes.default.svc")
            .arg("--authorization-mode=Node,RBAC")
            // A configuration value only: nothing here routes to it.
            .arg("--service-cluster-ip-range=10.0.0.0/24")
            // No Endpoints for the `kubernetes` Service: nothing would use them.
            .arg("--endpoint-reconciler-type=none")
            .arg("--profiling=false")
            // Extra flags for experiments (`--watch-cache=false`, say), split on spaces.
            .args(extra_args())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", binary.display()))
    }

    /// Polls `/readyz` as the admin until it says `ok`; `Err(log tail)` when the process
    /// exits or [`READY_WITHIN`] passes.
    async fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + READY_WITHIN;
        let mut client = None;
        let mut last_err = String::from("no answer yet");
        while Instant::now() < deadline {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                return Err(format!(
                    "exited with {status}; its log ends:\n{}",
                    self.log_tail()
                ));
            }
            // The serving certificate (and so the CA for the kubeconfigs) exists once the
            // server has generated it.
            if client.is_none() && self.write_kubeconfigs() {
                client = Some(self.client(ADMIN).await);
            }
            if let Some(c) = &client {
                let req = http::Request::get("/readyz").body(Vec::new()).unwrap();
                match tokio::time::timeout(Duration::from_secs(5), c.request_text(req)).await {
                    Ok(Ok(body)) if body.trim() == "ok" => return Ok(()),
                    Ok(Ok(body)) => last_err = body,
                    Ok(Err(e)) => last_err = e.to_string(),
                    Err(_) => last_err = "a /readyz request timed out".to_owned(),
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Err(format!(
            "not ready within {READY_WITHIN:?} (last answer: {last_err}); its log ends:\n{}",
            self.log_tail()
        ))
    }

    /// Writes one kubeconfig per user once the server's CA exists; whether it does.
    fn write_kubeconfigs(&self) -> bool {
        let Some(ca) = server_ca(&self.dir.path().join("certs/apiserver.crt")) else {
            return false;
        };
        let ca_path = self.dir.path().join("ca.crt");
        std::fs::write(&ca_path, ca).expect("write the CA");
        for u in &self.users {
            let config = format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: local\n  cluster:\n    \
                 server: {url}\n    certificate-authority: {ca}\nusers:\n- name: {name}\n  \
                 user:\n    token: {token}\ncontexts:\n- name: local\n  context:\n    \
                 cluster: local\n    user: {name}\ncurrent-context: local\n",
                url = self.url(),
                ca = ca_path.display(),
                name = u.name,
                token = u.token,
            );
            std::fs::write(self.kubeconfig(&u.name), config).expect("write a kubeconfig");
        }
        true
    }

    /// `https://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// The kubeconfig file of `user` (one of the users the server was started with).
    pub fn kubeconfig(&self, user: &str) -> PathBuf {
        assert!(
            self.users.iter().any(|u| u.name == user),
            "no user {user:?} on this server"
        );
        self.dir.path().join(format!("kubeconfig-{user}"))
    }

    /// The bearer token of `user`.
    pub fn token(&self, user: &str) -> &str {
        &self
            .users
            .iter()
            .find(|u| u.name == user)
            .unwrap_or_else(|| panic!("no user {user:?} on this server"))
            .token
    }

    /// A client acting as `user`.
    pub async fn client(&self, user: &str) -> Client {
        let path = self.kubeconfig(user);
        let kc = Kubeconfig::read_from(&path).expect("read the kubeconfig");
        let mut config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .expect("a client configuration from the kubeconfig");
        config.connect_timeout = Some(Duration::from_secs(10));
        config.read_timeout = Some(Duration::from_secs(30));
        Client::try_from(config).expect("a client")
    }

    /// A `KubeStore` acting as `user`, configured from its kubeconfig file the way the CNI
    /// plugin configures it.
    pub async fn store(&self, user: &str) -> KubeStore {
        KubeStore::connect(Some(&self.kubeconfig(user)))
            .await
            .expect("a KubeStore from the kubeconfig")
    }

    /// `kubectl` as `user`: the built binary, the user's kubeconfig, a private cache.
    pub fn kubectl(&self, user: &str) -> Command {
        let mut cmd = Command::new(&self.kubectl);
        cmd.arg("--kubeconfig")
            .arg(self.kubeconfig(user))
            .arg("--cache-dir")
            .arg(self.dir.path().join(format!("kubectl-cache-{user}")))
            .arg("--request-timeout=20s")
            .env_remove("KUBECONFIG")
            .stdin(Stdio::null());
        cmd
    }

    /// The last lines of kube-apiserver's log, for error messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.path().join(LOG)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for KubeApiServer {
    fn drop(&mut self) {
        self.kill();
        // etcd's own Drop kills and reaps it, after the API server is gone.
        self.etcd.take();
    }
}

fn user(name: &str, groups: &[&str]) -> User {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    User {
        name: name.to_owned(),
        groups: groups.iter().map(|g| (*g).to_owned()).collect(),
        token: format!("{name}-{}-{nanos:x}", std::process::id()),
    }
}

/// `token,user,uid,"group1,group2"` per user.
fn write_token_file(path: &Path, users: &[User]) {
    let mut text = String::new();
    for u in users {
        text.push_str(&format!(
            "{},{},uid-{},\"{}\"\n",
            u.token,
            u.name,
            u.name,
            u.groups.join(",")
        ));
    }
    std::fs::write(path, text).expect("write the token file");
}

/// An RSA key for signing and checking service-account tokens, made with `openssl`.
fn make_service_account_key(path: &Path) {
    let out = Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run openssl (install Debian's openssl): {e}"));
    assert!(
        out.status.success(),
        "openssl genpkey failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The CA that signed the server's self-generated certificate: the last PEM block of
/// `apiserver.crt` (the server writes its certificate, then its CA). `None` until the file
/// is complete.
fn server_ca(cert: &Path) -> Option<String> {
    let text = std::fs::read_to_string(cert).ok()?;
    let end = "-----END CERTIFICATE-----";
    let blocks: Vec<&str> = text
        .split_inclusive(end)
        .filter(|b| b.contains(end))
        .collect();
    if blocks.len() < 2 {
        return None;
    }
    Some(format!("{}\n", blocks.last()?.trim()))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// `IPAM_KUBE_APISERVER_ARGS`, split on whitespace: flags added to every start.
fn extra_args() -> Vec<String> {
    std::env::var("IPAM_KUBE_APISERVER_ARGS")
        .map(|v| v.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default()
}
