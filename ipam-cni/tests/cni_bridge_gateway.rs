//! The shipped host-local mode sample (`deploy/20-host-local.conflist`) through Debian's
//! `bridge` with `isGateway: true` and a default route, in namespaces the test creates:
//! the gateway is on the bridge, each namespace has its address (the range's prefix) and a
//! default route via the gateway, and pings the gateway and the other namespace.
//!
//! Only the bridge name, the subnet (a test-only 10.231.20.0/24), `dataDir` and `ipMasq`
//! (off: no host firewall rules) are changed from the shipped file. Everything created is
//! removed by a guard, also when an assertion fails.

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

fn in_ns(ns: &str, args: &[&str]) -> Output {
    let mut all = vec!["netns", "exec", ns];
    all.extend_from_slice(args);
    sh("ip", &all)
}

#[test]
fn shipped_host_local_conflist_gives_gateway_route_and_traffic() {
    require(BRIDGE_PLUGIN, "containernetworking-plugins");
    require("/usr/sbin/ip", "iproute2");
    require("/usr/bin/ping", "iputils-ping");
    let shipped: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/20-host-local.conflist"
        ))
        .unwrap(),
    )
    .unwrap();
    let id = std::process::id();
    let cleanup = Cleanup {
        namespaces: vec![format!("ipgw-{id}-a"), format!("ipgw-{id}-b")],
        bridge: format!("ipgw{id}"),
    };
    for ns in &cleanup.namespaces {
        sh("ip", &["netns", "add", ns]);
    }
    let data = tempfile::tempdir().unwrap();
    let mut conf = shipped["plugins"][0].clone();
    conf["cniVersion"] = shipped["cniVersion"].clone();
    conf["name"] = json!(format!("gw-{id}"));
    conf["bridge"] = json!(cleanup.bridge);
    conf["ipMasq"] = json!(false);
    conf["ipam"]["ranges"] = json!([[{"subnet": "10.231.20.0/24", "gateway": "10.231.20.1"}]]);
    conf["ipam"]["dataDir"] = json!(data.path());
    assert_eq!(
        conf["isGateway"], true,
        "the shipped sample is the isGateway case"
    );

    let mut ips = Vec::new();
    for (i, ns) in cleanup.namespaces.iter().enumerate() {
        let (ok, result, text) = bridge("ADD", ns, &format!("ctr-{i}"), &conf);
        assert!(ok, "bridge ADD in {ns}: {text}");
        assert_eq!(result["ips"][0]["gateway"], "10.231.20.1", "{result}");
        let ip = result["ips"][0]["address"].as_str().unwrap().to_owned();
        assert!(
            ip.starts_with("10.231.20.") && ip.ends_with("/24"),
            "{result}"
        );
        assert_ne!(ip, "10.231.20.1/24", "the gateway was handed out");
        assert_eq!(addresses_in(ns), vec![ip.clone()], "addresses in {ns}");
        let routes =
            String::from_utf8(in_ns(ns, &["ip", "route", "show", "default"]).stdout).unwrap();
        assert!(
            routes.contains("via 10.231.20.1"),
            "default route in {ns}: {routes}"
        );
        ips.push(ip);
    }
    let on_bridge =
        String::from_utf8(sh("ip", &["-4", "addr", "show", "dev", &cleanup.bridge]).stdout)
            .unwrap();
    assert!(
        on_bridge.contains("10.231.20.1/24"),
        "gateway on the bridge: {on_bridge}"
    );
    let peer = ips[1].split('/').next().unwrap();
    for target in ["10.231.20.1", peer] {
        in_ns(
            &cleanup.namespaces[0],
            &["ping", "-c", "1", "-W", "2", target],
        );
    }
    for (i, ns) in cleanup.namespaces.iter().enumerate() {
        let (ok, _, text) = bridge("DEL", ns, &format!("ctr-{i}"), &conf);
        assert!(ok, "bridge DEL in {ns}: {text}");
        assert!(addresses_in(ns).is_empty(), "{ns} still has addresses");
    }
}
