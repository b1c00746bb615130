//! Network namespaces for the bridge tests: Debian's `bridge` plugin run as a runtime
//! would, the addresses inside a namespace, and a guard that removes what a test created.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use serde_json::{Value, json};

pub const BRIDGE_PLUGIN: &str = "/usr/lib/cni/bridge";

/// Removes the namespaces and the bridge link on drop.
pub struct Cleanup {
    pub namespaces: Vec<String>,
    pub bridge: String,
}

impl Cleanup {
    /// Two namespaces `<tag>-<pid>-a` and `-b`, removed on drop, and the name of a bridge
    /// `<tag><pid>` (left to bridge to make, unless [`Cleanup::with_bridge`]).
    pub fn namespaces(tag: &str) -> Cleanup {
        let id = std::process::id();
        let cleanup = Cleanup {
            namespaces: vec![format!("{tag}-{id}-a"), format!("{tag}-{id}-b")],
            bridge: format!("{tag}{id}"),
        };
        for ns in &cleanup.namespaces {
            sh("ip", &["netns", "add", ns]);
        }
        cleanup
    }

    /// [`Cleanup::namespaces`] with the bridge made here, up, with the fixed MAC `mac`: a
    /// Linux bridge otherwise takes the lowest MAC of its ports, which changes when the
    /// second container joins, and bridge's CHECK compares the bridge's MAC with the one in
    /// the first container's ADD result.
    pub fn with_bridge(tag: &str, mac: &str) -> Cleanup {
        let cleanup = Cleanup::namespaces(tag);
        let br = cleanup.bridge.as_str();
        sh("ip", &["link", "add", br, "type", "bridge"]);
        sh("ip", &["link", "set", br, "address", mac]);
        sh("ip", &["link", "set", br, "up"]);
        cleanup
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .output();
    }
}

pub fn require(path: &str, package: &str) {
    assert!(
        Path::new(path).exists(),
        "{path} is missing: install the Debian package {package} (scripts/install-deps does)"
    );
}

pub fn sh(program: &str, args: &[&str]) -> Output {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs the bridge plugin for one container as a runtime would.
pub fn bridge(cmd: &str, ns: &str, container: &str, conf: &Value) -> (bool, Value, String) {
    let plugin_dir = Path::new(super::PLUGIN).parent().unwrap();
    let mut child = Command::new(BRIDGE_PLUGIN)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_COMMAND", cmd)
        .env("CNI_CONTAINERID", container)
        .env("CNI_NETNS", format!("/var/run/netns/{ns}"))
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", format!("{}:/usr/lib/cni", plugin_dir.display()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(conf.to_string().as_bytes()).unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let json = serde_json::from_str(&stdout).unwrap_or(Value::Null);
    let text = format!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    (out.status.success(), json, text)
}

/// The IPv4 addresses (with prefix) on `eth0` inside `ns`; empty if there is no `eth0`.
pub fn addresses_in(ns: &str) -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "ip", "-j", "addr", "show"])
        .output()
        .unwrap();
    let links: Value = serde_json::from_slice(&out.stdout).unwrap_or(json!([]));
    links
        .as_array()
        .into_iter()
        .flatten()
        .filter(|l| l["ifname"] == "eth0")
        .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
        .filter(|a| a["family"] == "inet")
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
        .collect()
}
