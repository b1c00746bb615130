//! End to end with Debian's reference plugins: `/usr/lib/cni/bridge` delegating to this
//! plugin for addresses, in network namespaces the test creates, with traffic between them.
//!
//! Needs root, `iproute2`, `iputils-ping` and `containernetworking-plugins` (v1.1.1 in
//! Debian, spec up to 1.0.0, so the configs here say 1.0.0). A missing one fails the test
//! with the package to install; nothing is skipped. Everything created (namespaces, the
//! bridge link) is removed by a guard, also when an assertion fails. Addresses come from
//! 10.99.0.0/24 and exist only inside the test's namespaces and bridge.

#![allow(clippy::unwrap_used)]

mod cni_support;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use serde_json::{Value, json};

const BRIDGE_PLUGIN: &str = "/usr/lib/cni/bridge";

/// Removes the namespaces and the bridge link on drop.
struct Cleanup {
    namespaces: Vec<String>,
    bridge: String,
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

fn require(path: &str, package: &str) {
    assert!(
        Path::new(path).exists(),
        "{path} is missing: install the Debian package {package} (scripts/install-deps does)"
    );
}

fn sh(program: &str, args: &[&str]) -> Output {
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
fn bridge(cmd: &str, ns: &str, container: &str, conf: &Value) -> (bool, Value, String) {
    let plugin_dir = Path::new(cni_support::PLUGIN).parent().unwrap();
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
fn addresses_in(ns: &str) -> Vec<String> {
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

#[test]
fn bridge_delegates_to_the_plugin_and_containers_talk() {
    require(BRIDGE_PLUGIN, "containernetworking-plugins");
    require("/usr/sbin/ip", "iproute2");
    require("/usr/bin/ping", "iputils-ping");
    let id = std::process::id();
    let cleanup = Cleanup {
        namespaces: vec![format!("ipcni-{id}-a"), format!("ipcni-{id}-b")],
        bridge: format!("ipcni{id}"),
    };
    for ns in &cleanup.namespaces {
        sh("ip", &["netns", "add", ns]);
    }
    // The bridge is made here with a fixed MAC: a Linux bridge otherwise takes the lowest
    // MAC of its ports, which changes when the second container joins, and bridge's CHECK
    // compares the bridge's MAC with the one in the first container's ADD result.
    let br = cleanup.bridge.as_str();
    sh("ip", &["link", "add", br, "type", "bridge"]);
    sh("ip", &["link", "set", br, "address", "02:99:00:00:00:01"]);
    sh("ip", &["link", "set", br, "up"]);
    let net = cni_support::Net::new(&format!("e2e-{id}"));
    let conf = json!({
        "cniVersion": "1.0.0",
        "name": net.name,
        "type": "bridge",
        "bridge": cleanup.bridge,
        "isGateway": false,
        "ipMasq": false,
        "nodename": "e2e-node",
        "ipam": {
            "type": "ipam-cni",
            "ipv4_pools": ["10.99.0.0/24"],
            "datastore_path": net.db,
        }
    });

    let mut results = Vec::new();
    for (i, ns) in cleanup.namespaces.iter().enumerate() {
        let container = format!("ctr-{i}");
        let (ok, result, text) = bridge("ADD", ns, &container, &conf);
        assert!(ok, "bridge ADD in {ns}: {text}");
        let ip = result["ips"][0]["address"].as_str().unwrap().to_owned();
        assert!(
            ip.starts_with("10.99.0.") && ip.ends_with("/26"),
            "{result}"
        );
        assert_eq!(addresses_in(ns), vec![ip.clone()], "addresses in {ns}");
        results.push((container, result, ip));
    }
    assert_ne!(results[0].2, results[1].2);

    let peer = results[1].2.split('/').next().unwrap();
    sh(
        "ip",
        &[
            "netns",
            "exec",
            &cleanup.namespaces[0],
            "ping",
            "-c",
            "1",
            "-W",
            "2",
            peer,
        ],
    );

    // CHECK through bridge (which also CHECKs the IPAM plugin) with the ADD result.
    for ((container, result, _), ns) in results.iter().zip(&cleanup.namespaces) {
        let mut check = conf.clone();
        check["prevResult"] = result.clone();
        let (ok, _, text) = bridge("CHECK", ns, container, &check);
        assert!(ok, "bridge CHECK in {ns}: {text}");
    }
    assert_eq!(net.dump().allocated(), 2);

    for ((container, result, _), ns) in results.iter().zip(&cleanup.namespaces) {
        let mut del = conf.clone();
        del["prevResult"] = result.clone();
        let (ok, _, text) = bridge("DEL", ns, container, &del);
        assert!(ok, "bridge DEL in {ns}: {text}");
        assert!(addresses_in(ns).is_empty(), "{ns} still has addresses");
        // After DEL, CHECK fails: the interface and the addresses are gone.
        let mut check = conf.clone();
        check["prevResult"] = result.clone();
        let (ok, _, _) = bridge("CHECK", ns, container, &check);
        assert!(!ok, "CHECK after DEL succeeded in {ns}");
    }
    let dump = net.dump();
    assert_eq!(dump.allocated(), 0);
    assert_eq!(dump.of_kind("IPAMHandle").count(), 0);
}
