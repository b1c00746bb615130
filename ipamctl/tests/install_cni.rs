//! `ipamctl install-cni` as the DaemonSet's init container runs it, with temporary
//! directories standing in for the host's /opt/cni/bin and /etc/cni/net.d and for the
//! ServiceAccount mount.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const CONFLIST: &str = r#"{"cniVersion":"1.0.0","name":"k8s-pod-network","plugins":[
  {"type":"bridge","datastore_type":"kubernetes",
   "kubernetes":{"kubeconfig":"/etc/cni/net.d/ipam-kubeconfig"},
   "ipam":{"type":"ipam-cni"}}]}"#;
const CA: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

/// The pod's view: a source image, a ServiceAccount mount and the two host directories.
struct Node {
    dir: tempfile::TempDir,
}

impl Node {
    fn new() -> Self {
        let node = Node {
            dir: tempfile::tempdir().unwrap(),
        };
        for d in ["image", "sa", "host/opt/cni/bin", "host/etc/cni/net.d"] {
            std::fs::create_dir_all(node.path(d)).unwrap();
        }
        std::fs::write(node.path("image/ipam-cni"), b"\x7fELF plugin v1").unwrap();
        std::fs::write(node.path("image/10-ipam.conflist"), CONFLIST).unwrap();
        std::fs::write(node.path("sa/token"), "token-one\n").unwrap();
        std::fs::write(node.path("sa/ca.crt"), CA).unwrap();
        node
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn bin(&self) -> PathBuf {
        self.path("host/opt/cni/bin/ipam-cni")
    }

    fn conflist(&self) -> PathBuf {
        self.path("host/etc/cni/net.d/10-ipam.conflist")
    }

    fn kubeconfig(&self) -> PathBuf {
        self.path("host/etc/cni/net.d/ipam-kubeconfig")
    }

    /// Runs the installer with the kubelet's variables for 10.0.0.1:443 and `env` on top
    /// (an empty value removes the variable).
    fn install(&self, env: &[(&str, &str)]) -> Output {
        self.command(env).output().unwrap()
    }

    /// The installer's command line, as [`Node::install`] runs it.
    fn command(&self, env: &[(&str, &str)]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ipamctl"));
        cmd.arg("install-cni")
            .arg("--plugin")
            .arg(self.path("image/ipam-cni"))
            .arg("--conflist")
            .arg(self.path("image/10-ipam.conflist"))
            .arg("--bin-dir")
            .arg(self.path("host/opt/cni/bin"))
            .arg("--conf-dir")
            .arg(self.path("host/etc/cni/net.d"))
            .arg("--service-account-dir")
            .arg(self.path("sa"))
            .env("KUBERNETES_SERVICE_HOST", "10.0.0.1")
            .env("KUBERNETES_SERVICE_PORT", "443");
        for (k, v) in env {
            if v.is_empty() {
                cmd.env_remove(k);
            } else {
                cmd.env(k, v);
            }
        }
        cmd
    }

    fn install_ok(&self) -> String {
        let out = self.install(&[]);
        assert!(
            out.status.success(),
            "install-cni failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Every file under the host directories, with its mode and content.
    fn host_files(&self) -> BTreeMap<PathBuf, (u32, Vec<u8>)> {
        let mut files = BTreeMap::new();
        for dir in ["host/opt/cni/bin", "host/etc/cni/net.d"] {
            for entry in std::fs::read_dir(self.path(dir)).unwrap() {
                let path = entry.unwrap().path();
                let meta = std::fs::symlink_metadata(&path).unwrap();
                let content = if meta.is_file() {
                    std::fs::read(&path).unwrap()
                } else {
                    Vec::new()
                };
                files.insert(path, (meta.permissions().mode() & 0o7777, content));
            }
        }
        files
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn the_plugin_its_kubeconfig_and_its_conflist_are_installed_with_least_modes() {
    let node = Node::new();
    let said = node.install_ok();
    assert_eq!(said.matches("installed ").count(), 3, "{said}");
    assert_eq!(std::fs::read(node.bin()).unwrap(), b"\x7fELF plugin v1");
    assert_eq!(mode(&node.bin()), 0o755);
    assert_eq!(std::fs::read_to_string(node.conflist()).unwrap(), CONFLIST);
    assert_eq!(mode(&node.conflist()), 0o644);
    assert_eq!(mode(&node.kubeconfig()), 0o600);
    let kubeconfig: serde_json::Value =
        serde_yaml::from_str(&std::fs::read_to_string(node.kubeconfig()).unwrap()).unwrap();
    let cluster = &kubeconfig["clusters"][0]["cluster"];
    assert_eq!(cluster["server"], "https://10.0.0.1:443");
    let ca = cluster["certificate-authority-data"].as_str().unwrap();
    assert_eq!(base64_decode(ca), CA.as_bytes());
    assert_eq!(kubeconfig["users"][0]["user"]["token"], "token-one");
    // The token is never printed.
    assert!(!said.contains("token-one"), "{said}");
    // Nothing but the three files is left behind (no temporary files).
    assert_eq!(node.host_files().len(), 3, "{:?}", node.host_files().keys());
}

#[test]
fn a_second_run_changes_nothing_and_a_rotated_token_rewrites_only_the_kubeconfig() {
    let node = Node::new();
    node.install_ok();
    let before = node.host_files();
    let first_inode = inode(&node.bin());
    let again = node.install_ok();
    assert_eq!(again.matches("unchanged ").count(), 3, "{again}");
    assert_eq!(node.host_files(), before);
    // Not rewritten, so a runtime executing the binary is not disturbed.
    assert_eq!(inode(&node.bin()), first_inode);

    std::fs::write(node.path("sa/token"), "token-two\n").unwrap();
    let rotated = node.install_ok();
    assert_eq!(rotated.matches("unchanged ").count(), 2, "{rotated}");
    assert!(
        rotated.contains(&format!("installed {}", node.kubeconfig().display())),
        "{rotated}"
    );
    let text = std::fs::read_to_string(node.kubeconfig()).unwrap();
    assert!(text.contains("token-two") && !text.contains("token-one"));
    assert_eq!(mode(&node.kubeconfig()), 0o600);
}

#[test]
fn a_changed_mode_or_a_stale_file_is_replaced_by_a_rename() {
    let node = Node::new();
    std::fs::write(node.bin(), b"old plugin").unwrap();
    std::fs::set_permissions(node.bin(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let old_inode = inode(&node.bin());
    node.install_ok();
    assert_eq!(std::fs::read(node.bin()).unwrap(), b"\x7fELF plugin v1");
    assert_eq!(mode(&node.bin()), 0o755);
    // A new inode: the new file was renamed over the old one, not written into it.
    assert_ne!(inode(&node.bin()), old_inode);
}

#[test]
fn a_symlink_planted_in_a_host_directory_is_refused_and_not_followed() {
    let node = Node::new();
    let victim = node.path("victim");
    std::fs::write(&victim, "precious").unwrap();
    std::os::unix::fs::symlink(&victim, node.kubeconfig()).unwrap();
    let out = node.install(&[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!(
            "refusing to replace {}: it is a symbolic link",
            node.kubeconfig().display()
        )),
        "{}",
        stderr(&out)
    );
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    assert!(
        std::fs::symlink_metadata(node.kubeconfig())
            .unwrap()
            .file_type()
            .is_symlink()
    );
    // The conflist comes after the kubeconfig, so the network was not enabled.
    assert!(!node.conflist().exists());
}

#[test]
fn the_node_name_placeholder_becomes_the_nodes_name() {
    let node = Node::new();
    let with_placeholder = CONFLIST.replacen(
        "\"type\":\"bridge\"",
        "\"type\":\"bridge\",\"nodename\":\"__KUBERNETES_NODE_NAME__\"",
        1,
    );
    assert_ne!(with_placeholder, CONFLIST);
    std::fs::write(node.path("image/10-ipam.conflist"), &with_placeholder).unwrap();
    let empty = node.host_files();
    // Without the variable, or with a name no node can have, nothing is installed.
    for (env, message) in [
        (&[][..], "KUBERNETES_NODE_NAME is not set"),
        (
            &[("KUBERNETES_NODE_NAME", "a\",\"b")][..],
            "invalid KUBERNETES_NODE_NAME",
        ),
    ] {
        let out = node.install(env);
        assert_eq!(out.status.code(), Some(2), "{env:?}");
        assert!(stderr(&out).contains(message), "{env:?}: {}", stderr(&out));
        assert_eq!(node.host_files(), empty, "{env:?} changed the node");
    }
    let out = node.install(&[("KUBERNETES_NODE_NAME", "worker-7.example")]);
    assert!(out.status.success(), "{}", stderr(&out));
    let installed: serde_json::Value =
        serde_json::from_slice(&std::fs::read(node.conflist()).unwrap()).unwrap();
    assert_eq!(installed["plugins"][0]["nodename"], "worker-7.example");
}

#[test]
fn a_bad_environment_is_named_and_changes_nothing() {
    let node = Node::new();
    let empty = node.host_files();
    let cases: [(&[(&str, &str)], &str); 3] = [
        (
            &[("KUBERNETES_SERVICE_HOST", "")],
            "KUBERNETES_SERVICE_HOST is not set",
        ),
        (
            &[("KUBERNETES_SERVICE_PORT", "https")],
            "invalid KUBERNETES_SERVICE_PORT: \"https\" is not a port number",
        ),
        (
            &[("KUBERNETES_SERVICE_HOST", "a/b")],
            "invalid KUBERNETES_SERVICE_HOST",
        ),
    ];
    for (env, message) in cases {
        let out = node.install(env);
        assert_eq!(out.status.code(), Some(2), "{env:?}");
        assert!(stderr(&out).contains(message), "{env:?}: {}", stderr(&out));
        assert_eq!(node.host_files(), empty, "{env:?} changed the node");
    }
}

#[test]
fn a_missing_or_bad_input_keeps_the_os_cause_and_changes_nothing() {
    let node = Node::new();
    let empty = node.host_files();
    std::fs::remove_file(node.path("sa/token")).unwrap();
    let out = node.install(&[]);
    assert_eq!(out.status.code(), Some(2));
    let expected = format!(
        "cannot read {}: No such file or directory",
        node.path("sa/token").display()
    );
    assert!(stderr(&out).contains(&expected), "{}", stderr(&out));
    assert_eq!(node.host_files(), empty);

    std::fs::write(node.path("sa/token"), "t").unwrap();
    std::fs::write(node.path("image/10-ipam.conflist"), "{\"name\": 1}").unwrap();
    let out = node.install(&[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("not a valid CNI network configuration list"),
        "{}",
        stderr(&out)
    );
    assert_eq!(node.host_files(), empty);
}

fn inode(path: &Path) -> u64 {
    std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(path).unwrap())
}

fn base64_decode(text: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap()
}

/// Polls `done` every 50 ms for at most 20 s.
fn eventually(what: &str, done: impl Fn() -> bool) {
    for _ in 0..400 {
        if done() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("not within 20 s: {what}");
}

#[test]
fn with_refresh_the_kubeconfig_follows_the_token_until_sigterm() {
    let node = Node::new();
    let mut child = Running(
        node.command(&[])
            .args(["--refresh", "100ms"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let has =
        |token: &str| std::fs::read_to_string(node.kubeconfig()).is_ok_and(|t| t.contains(token));
    eventually("the first install", || has("token-one"));
    std::fs::write(node.path("sa/token"), "token-two\n").unwrap();
    eventually("the rotated token in the kubeconfig", || has("token-two"));
    assert_eq!(mode(&node.kubeconfig()), 0o600);
    // PID 1 in a container ignores SIGTERM unless it handles it: the refresh loop does.
    let killed = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = child.0.wait().unwrap();
    assert!(status.success(), "{status}");
}

/// A child process, killed if a failed check leaves it running.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}
