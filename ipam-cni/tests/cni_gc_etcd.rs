//! GC on a real etcd store shared by two nodes: it releases only this node's allocations
//! of this network, never another node's nor another network's.

#![allow(clippy::unwrap_used)]

mod cni_support;

use cni_support::{container_env, run};
use ipam_core::{HandleId, IpPool, Ipam, SystemClock};
use serde_json::{Value, json};

fn conf(endpoint: &str, network: &str, node: &str) -> Value {
    json!({
        "cniVersion": "1.1.0",
        "name": network,
        "type": "bridge",
        "datastore_type": "etcdv3",
        "etcd_endpoints": endpoint,
        "nodename": node,
        "ipam": {"type": "ipam-cni", "ipv4_pools": ["10.98.0.0/24"]},
    })
}

#[test]
fn gc_touches_only_this_nodes_allocations_of_this_network() {
    let server = ipam_tests::etcd::start();
    let endpoint = server.endpoint();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let ipam = runtime.block_on(async {
        let store = ipam_tests::etcd::store(&server, ipam_etcd::DEFAULT_PREFIX).await;
        let ipam = Ipam::new(store, SystemClock);
        let pool = IpPool::new("10.98.0.0/24".parse().unwrap());
        ipam.create_pool("gc-pool", pool).await.unwrap();
        ipam
    });
    let add = |network: &str, node: &str, id: &str| {
        run(
            &container_env("ADD", id, "eth0"),
            &conf(&endpoint, network, node).to_string(),
        )
        .ok()
        .clone()
    };
    add("net", "node-1", "gone");
    add("net", "node-1", "kept");
    add("net", "node-2", "other-node");
    add("othernet", "node-1", "gone");
    let mut gc = conf(&endpoint, "net", "node-1");
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "kept", "ifname": "eth0"}]);
    let env = [
        ("CNI_COMMAND".to_owned(), "GC".to_owned()),
        ("CNI_PATH".to_owned(), "/usr/lib/cni".to_owned()),
    ];
    run(&env, &gc.to_string()).ok();
    let held = |handle: &str| {
        let id = HandleId::new(handle).unwrap();
        runtime
            .block_on(ipam.ips_by_handle(&id))
            .map_or(0, |ips| ips.len())
    };
    assert_eq!(held("net.gone"), 0, "the stale attachment is released");
    assert_eq!(held("net.kept"), 1, "a valid attachment is kept");
    assert_eq!(
        held("net.other-node"),
        1,
        "another node's allocation is kept"
    );
    assert_eq!(
        held("othernet.gone"),
        1,
        "another network's allocation is kept"
    );
    // Even GC with no valid attachment at all on node-2 leaves node-1's alone.
    let mut gc2 = conf(&endpoint, "net", "node-2");
    gc2["cni.dev/valid-attachments"] = json!([]);
    run(&env, &gc2.to_string()).ok();
    assert_eq!(held("net.other-node"), 0);
    assert_eq!(held("net.kept"), 1);
    assert_eq!(held("othernet.gone"), 1);
}
