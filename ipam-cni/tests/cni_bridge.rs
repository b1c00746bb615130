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

use cni_support::netns::{BRIDGE_PLUGIN, Cleanup, addresses_in, bridge, require, sh};
use serde_json::json;

#[test]
fn bridge_delegates_to_the_plugin_and_containers_talk() {
    require(BRIDGE_PLUGIN, "containernetworking-plugins");
    require("/usr/sbin/ip", "iproute2");
    require("/usr/bin/ping", "iputils-ping");
    let id = std::process::id();
    let cleanup = Cleanup::with_bridge("ipcni", "02:99:00:00:00:01");
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
