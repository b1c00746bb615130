//! The plugin binary as a runtime drives it: every verb at every `cniVersion`, the result
//! layouts, and the errors (each with its code, each leaving the store as it was).

#![allow(clippy::unwrap_used)]

mod cni_support;

use cni_support::{Net, VERSIONS, container_env, run};
use serde_json::{Value, json};

/// A plugin environment.
type Env = Vec<(String, String)>;

fn pool24() -> Value {
    json!({"ipv4_pools": ["10.99.0.0/24"]})
}

#[test]
fn version_lists_exactly_what_is_supported() {
    let reply = run(
        &[("CNI_COMMAND".into(), "VERSION".into())],
        r#"{"cniVersion":"1.1.0"}"#,
    );
    assert_eq!(
        reply.ok()["supportedVersions"],
        json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
    );
}

#[test]
fn every_version_adds_checks_and_deletes() {
    let net = Net::new("mynet");
    for (i, v) in VERSIONS.iter().enumerate() {
        let conf = net.conf(v, pool24());
        let id = format!("c{i}");
        let add = net.run("ADD", &id, &conf);
        let out = add.ok();
        assert_eq!(out["cniVersion"], *v, "{add:?}");
        let ip = &out["ips"][0];
        assert!(ip["address"].as_str().unwrap().ends_with("/26"), "{add:?}");
        // 0.3.x and 0.4.0 carry the address family; 1.x does not.
        let legacy = v.starts_with("0.");
        assert_eq!(ip.get("version").is_some(), legacy, "{v}: {ip}");
        if legacy {
            assert_eq!(ip["version"], "4");
        }
        assert!(ip.get("gateway").is_none());

        // CHECK exists from 0.4.0 on; before that the verb is refused as unsupported.
        let mut with_prev = conf.clone();
        with_prev["prevResult"] = out.clone();
        let check = net.run("CHECK", &id, &with_prev);
        if matches!(*v, "0.3.0" | "0.3.1") {
            assert_eq!(check.code(), 1, "{v}");
        } else {
            assert_eq!(check.ok(), &Value::Null);
        }

        // A second ADD of the same attachment answers with the same address.
        assert_eq!(net.run("ADD", &id, &conf).ips(), add.ips());
        assert_eq!(net.run("DEL", &id, &conf).ok(), &Value::Null);
        // DEL again: nothing there is success.
        net.run("DEL", &id, &conf).ok();
        if !matches!(*v, "0.3.0" | "0.3.1") {
            assert_eq!(net.run("CHECK", &id, &with_prev).code(), 3, "{v}");
        }
    }
    assert_eq!(net.dump().allocated(), 0);
    assert_eq!(net.dump().of_kind("IPAMHandle").count(), 0);
}

#[test]
fn gc_and_status_need_1_1_0() {
    let net = Net::new("mynet");
    for v in ["0.4.0", "1.0.0"] {
        let conf = net.conf(v, pool24());
        let status = run(
            &[("CNI_COMMAND".into(), "STATUS".into())],
            &conf.to_string(),
        );
        assert_eq!(status.code(), 1, "{v}");
        let gc = run(
            &[
                ("CNI_COMMAND".into(), "GC".into()),
                ("CNI_PATH".into(), "/usr/lib/cni".into()),
            ],
            &conf.to_string(),
        );
        assert_eq!(gc.code(), 1, "{v}");
    }
    let conf = net.conf("1.1.0", pool24());
    run(
        &[("CNI_COMMAND".into(), "STATUS".into())],
        &conf.to_string(),
    )
    .ok();
}

#[test]
fn dual_stack_returns_both_families_ipv4_first() {
    let net = Net::new("ds");
    let conf = net.conf(
        "1.0.0",
        json!({"assign_ipv4": "true", "assign_ipv6": "true",
               "ipv4_pools": ["10.99.0.0/24"], "ipv6_pools": ["fd00:99::/120"]}),
    );
    let ips = net.run("ADD", "c1", &conf).ips();
    assert_eq!(ips.len(), 2, "{ips:?}");
    assert!(
        ips[0].starts_with("10.99.0.") && ips[1].starts_with("fd00:99::"),
        "{ips:?}"
    );
    let legacy = net.run("ADD", "c1", &net.conf("0.4.0", conf["ipam"].clone()));
    let versions: Vec<&str> = legacy.ok()["ips"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["version"].as_str().unwrap())
        .collect();
    assert_eq!(versions, ["4", "6"]);
}

#[test]
fn attributes_follow_calico() {
    let net = Net::new("k8s-pod-network");
    let conf = net.conf("1.0.0", pool24());
    let mut env = container_env("ADD", "abc123", "eth0");
    env.push((
        "CNI_ARGS".into(),
        "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0".into(),
    ));
    run(&env, &conf.to_string()).ok();
    let dump = net.dump();
    let (_, block) = dump.of_kind("IPAMBlock").next().unwrap();
    let attr = &block["attributes"][0];
    assert_eq!(attr["handle_id"], "k8s-pod-network.abc123");
    let s = &attr["secondary"];
    assert_eq!(s["node"], "node-1");
    assert_eq!(s["namespace"], "default");
    assert_eq!(s["pod"], "web-0");
    assert_eq!(s["ifname"], "eth0");
    // Go's time.Time.String(): "2006-01-02 15:04:05.999999999 +0000 UTC".
    let ts = s["timestamp"].as_str().unwrap();
    assert!(ts.ends_with(" +0000 UTC") && ts.len() > 25, "{ts}");
    assert_eq!(block["affinity"], "host:node-1");
    assert!(
        dump.of_kind("IPAMHandle")
            .any(|(n, _)| n == "k8s-pod-network.abc123")
    );
}

#[test]
fn del_also_releases_the_workload_handle() {
    let net = Net::new("mynet");
    let conf = net.conf("1.0.0", pool24());
    net.run("ADD", "seed", &conf).ok();
    // An allocation made under Calico's older `<namespace>.<pod>` handle.
    pollster::block_on(async {
        use ipam_core::{AutoAssignArgs, HandleId, Ipam, NodeName};
        let ipam = Ipam::new(
            ipam_sqlite::SqliteStore::open(&net.db).unwrap(),
            ipam_core::SystemClock,
        );
        let args = AutoAssignArgs::new(NodeName::new("node-1").unwrap(), 1, 0)
            .with_handle(HandleId::new("default.web-0").unwrap());
        ipam.auto_assign(&args).await.unwrap();
    });
    assert_eq!(net.dump().allocated(), 2);
    let mut env = container_env("DEL", "other", "eth0");
    env.push((
        "CNI_ARGS".into(),
        "K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0".into(),
    ));
    run(&env, &conf.to_string()).ok();
    assert_eq!(net.dump().allocated(), 1);
}

#[test]
fn check_refuses_addresses_the_handle_does_not_hold() {
    let net = Net::new("mynet");
    let conf = net.conf("1.1.0", pool24());
    let add = net.run("ADD", "c1", &conf);
    let mut prev = conf.clone();
    prev["prevResult"] = add.json.clone();
    net.run("CHECK", "c1", &prev).ok();
    prev["prevResult"]["ips"][0]["address"] = json!("10.99.0.200/26");
    assert_eq!(net.run("CHECK", "c1", &prev).code(), 103);
}

#[test]
fn gc_releases_only_stale_attachments_of_this_network() {
    let net = Net::new("mynet");
    let conf = net.conf("1.1.0", pool24());
    let keep = net.run("ADD", "keep", &conf).ips();
    net.run("ADD", "stale", &conf).ok();
    // The same container on another network is not this network's business.
    let mut other = conf.clone();
    other["name"] = json!("othernet");
    net.run("ADD", "stale", &other).ok();
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "keep", "ifname": "eth0"}]);
    let env = [
        ("CNI_COMMAND".to_owned(), "GC".to_owned()),
        ("CNI_PATH".to_owned(), "/usr/lib/cni".to_owned()),
    ];
    run(&env, &gc.to_string()).ok();
    let dump = net.dump();
    let handles: Vec<&str> = dump.of_kind("IPAMHandle").map(|(n, _)| n).collect();
    assert_eq!(handles, ["mynet.keep", "othernet.stale"]);
    assert_eq!(net.run("ADD", "keep", &conf).ips(), keep);
    // An attachment on another interface of a valid container is stale too.
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "keep", "ifname": "eth1"}]);
    run(&env, &gc.to_string()).ok();
    assert!(
        net.dump()
            .of_kind("IPAMHandle")
            .all(|(n, _)| n != "mynet.keep")
    );
}

#[test]
fn status_reports_a_full_pool_and_an_unusable_store() {
    let net = Net::new("mynet");
    let conf = net.conf("1.1.0", json!({"ipv4_pools": ["10.99.0.0/30"]}));
    let status = |c: &Value| run(&[("CNI_COMMAND".into(), "STATUS".into())], &c.to_string());
    // The pool does not exist yet, but ADD would create it.
    status(&conf).ok();
    for i in 0..4 {
        net.run("ADD", &format!("c{i}"), &conf).ok();
    }
    assert_eq!(status(&conf).code(), 50);
    let bad = net.dir.path().join("not-a-db");
    std::fs::write(&bad, "hello").unwrap();
    let mut c = conf.clone();
    c["ipam"]["datastore_path"] = json!(bad);
    assert_eq!(status(&c).code(), 50);
    assert_eq!(std::fs::read_to_string(&bad).unwrap(), "hello");
}

/// Each bad request gets its code and leaves every stored object and the revision counter
/// exactly as they were.
#[test]
fn rejected_requests_change_nothing() {
    let net = Net::new("mynet");
    let good = net.conf("1.0.0", json!({"ipv4_pools": ["10.99.0.0/30"]}));
    for i in 0..4 {
        net.run("ADD", &format!("fill{i}"), &good).ok();
    }
    let before = net.dump();
    assert_eq!(before.allocated(), 4);
    let env = |cmd: &str| container_env(cmd, "newc", "eth0");
    let without = |var: &str| {
        let mut e = env("ADD");
        e.retain(|(k, _)| k != var);
        e
    };
    let mut with_args = env("ADD");
    with_args.push(("CNI_ARGS".into(), "K8S_POD_NAME".into()));
    let ipam = |patch: Value| {
        let mut c = good.clone();
        cni_support::merge(&mut c["ipam"], patch);
        c.to_string()
    };
    let mut bad_version = good.clone();
    bad_version["cniVersion"] = json!("0.2.0");
    let mut unknown_version = good.clone();
    unknown_version["cniVersion"] = json!("7.0.0");
    let mut etcd = good.clone();
    etcd["datastore_type"] = json!("etcdv3");
    // Nothing listens on port 1 of loopback: an unreachable etcd.
    etcd["etcd_endpoints"] = json!("http://127.0.0.1:1");
    let cases: Vec<(&str, Env, String, u64)> = vec![
        ("malformed JSON", env("ADD"), "{\"cniVersion\":".into(), 6),
        (
            "no CNI_COMMAND",
            without("CNI_COMMAND"),
            good.to_string(),
            4,
        ),
        (
            "unknown CNI_COMMAND",
            container_env("MOVE", "newc", "eth0"),
            good.to_string(),
            4,
        ),
        (
            "no CNI_CONTAINERID",
            without("CNI_CONTAINERID"),
            good.to_string(),
            4,
        ),
        ("no CNI_NETNS", without("CNI_NETNS"), good.to_string(), 4),
        ("no CNI_IFNAME", without("CNI_IFNAME"), good.to_string(), 4),
        ("malformed CNI_ARGS", with_args, good.to_string(), 4),
        ("cniVersion 0.2.0", env("ADD"), bad_version.to_string(), 1),
        (
            "unknown cniVersion",
            env("ADD"),
            unknown_version.to_string(),
            1,
        ),
        (
            "wrong ipam.type",
            env("ADD"),
            ipam(json!({"type": "host-local"})),
            7,
        ),
        (
            "pool CIDR does not parse",
            env("ADD"),
            ipam(json!({"ipv4_pools": ["10.99.0.0/33"]})),
            7,
        ),
        (
            "pool CIDR with host bits",
            env("ADD"),
            ipam(json!({"ipv4_pools": ["10.99.0.1/24"]})),
            7,
        ),
        (
            "pools of the wrong JSON type",
            env("ADD"),
            ipam(json!({"ipv4_pools": "10.99.0.0/24"})),
            6,
        ),
        (
            "string boolean not a boolean",
            env("ADD"),
            ipam(json!({"assign_ipv4": "yes"})),
            7,
        ),
        ("unreachable etcd", env("ADD"), etcd.to_string(), 11),
        (
            "pool named but missing",
            env("ADD"),
            ipam(json!({"ipv4_pools": ["nosuchpool"]})),
            100,
        ),
        ("exhausted pool", env("ADD"), good.to_string(), 101),
        (
            "dual-stack with a missing IPv6 pool",
            env("ADD"),
            ipam(json!({"assign_ipv6": true, "ipv6_pools": ["missing-v6"]})),
            100,
        ),
        (
            "CHECK of an unknown container",
            env("CHECK"),
            good.to_string(),
            3,
        ),
    ];
    for (what, env, stdin, want) in cases {
        let reply = run(&env, &stdin);
        assert_eq!(reply.code(), want, "{what}: {reply:?}");
        assert!(reply.json["msg"].is_string(), "{what}: {reply:?}");
        assert_eq!(net.dump(), before, "{what} changed the store");
    }
}

#[test]
fn a_named_cidr_pool_that_cannot_serve_is_not_left_behind() {
    let net = Net::new("mynet");
    // IPv4 by CIDR (would be created) with an IPv6 pool that does not exist by name:
    // refused before anything is created.
    let conf = net.conf(
        "1.0.0",
        json!({"assign_ipv6": true, "ipv4_pools": ["10.99.0.0/24"], "ipv6_pools": ["nope"]}),
    );
    assert_eq!(net.run("ADD", "c1", &conf).code(), 100);
    assert_eq!(net.dump().of_kind("IPPool").count(), 0);
}

#[test]
fn no_pool_anywhere_is_a_clear_error() {
    let net = Net::new("mynet");
    let reply = net.run("ADD", "c1", &net.conf("1.0.0", json!({})));
    assert_eq!(reply.code(), 7);
    let details = reply.json["details"].as_str().unwrap();
    assert!(details.contains("ipv4_pools"), "{details}");
}
