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

use cni_support::netns::{BRIDGE_PLUGIN, Cleanup, addresses_in, bridge, require, sh};
use serde_json::{Value, json};
use std::process::Output;

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
    let cleanup = Cleanup::namespaces("ipgw");
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
