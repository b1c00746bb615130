//! The plugin binary against unsafe inputs: a GC request that names no valid attachments,
//! corrupt objects in the store, special pool ranges, and requests outside the spec's
//! bounds. Each is refused with the CNI error JSON (exit 1, never a panic's 101) and leaves
//! every stored object as it was.

#![allow(clippy::unwrap_used)]

mod cni_support;

use cni_support::{Net, container_env, run};
use serde_json::{Value, json};

fn pool26() -> Value {
    json!({"ipv4_pools": ["10.99.0.0/26"]})
}

fn gc_env() -> Vec<(String, String)> {
    vec![
        ("CNI_COMMAND".to_owned(), "GC".to_owned()),
        ("CNI_PATH".to_owned(), "/usr/lib/cni".to_owned()),
    ]
}

/// Rewrites the spec of every stored object of `kind` with `edit`, as a foreign writer
/// (or a bad restore) would, without going through the plugin.
fn corrupt(net: &Net, kind: &str, edit: impl Fn(&mut Value)) {
    let conn = rusqlite::Connection::open(&net.db).unwrap();
    let rows: Vec<(String, String)> = conn
        .prepare("SELECT name, spec FROM objects WHERE kind = ?1")
        .unwrap()
        .query_map([kind], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(!rows.is_empty(), "no {kind} to corrupt");
    for (name, spec) in rows {
        let mut spec: Value = serde_json::from_str(&spec).unwrap();
        edit(&mut spec);
        conn.execute(
            "UPDATE objects SET spec = ?1 WHERE kind = ?2 AND name = ?3",
            (spec.to_string(), kind, name),
        )
        .unwrap();
    }
}

/// Asserts a failed run answered with the CNI error JSON and exit status 1.
fn refused(reply: &cni_support::Reply) -> u64 {
    assert_eq!(reply.status, Some(1), "{reply:?}");
    reply.code()
}

#[test]
fn gc_without_valid_attachments_releases_nothing() {
    let net = Net::new("mynet");
    let conf = net.conf("1.1.0", pool26());
    net.run("ADD", "c1", &conf).ok();
    net.run("ADD", "c2", &conf).ok();
    let before = net.dump();
    let reply = run(&gc_env(), &conf.to_string());
    assert_eq!(refused(&reply), 7);
    assert!(reply.stdout.contains("valid-attachments"), "{reply:?}");
    assert_eq!(net.dump(), before, "GC without the key changed the store");
}

#[test]
fn gc_with_a_null_list_means_none_is_valid() {
    // Go encodes an empty slice as null: the runtime saying no attachment is valid.
    let net = Net::new("mynet");
    let conf = net.conf("1.1.0", pool26());
    net.run("ADD", "c1", &conf).ok();
    let mut null = conf.clone();
    null["cni.dev/valid-attachments"] = Value::Null;
    run(&gc_env(), &null.to_string()).ok();
    assert_eq!(net.dump().of_kind("IPAMHandle").count(), 0);
    assert_eq!(net.dump().allocated(), 0);
}

#[test]
fn gc_reads_the_draft_key_and_an_empty_list_means_none_is_valid() {
    let net = Net::new("mynet");
    let conf = net.conf("1.1.0", pool26());
    net.run("ADD", "keep", &conf).ok();
    net.run("ADD", "stale", &conf).ok();
    let mut draft = conf.clone();
    draft["cni.dev/attachments"] = json!([{"containerID": "keep", "ifname": "eth0"}]);
    run(&gc_env(), &draft.to_string()).ok();
    let handles = |net: &Net| -> Vec<String> {
        net.dump()
            .of_kind("IPAMHandle")
            .map(|(n, _)| n.to_owned())
            .collect()
    };
    assert_eq!(handles(&net), ["mynet.keep"]);
    let mut bad = conf.clone();
    bad["cni.dev/attachments"] = json!("keep");
    let before = net.dump();
    assert_eq!(refused(&run(&gc_env(), &bad.to_string())), 6);
    assert_eq!(net.dump(), before);
    let mut none = conf.clone();
    none["cni.dev/valid-attachments"] = json!([]);
    run(&gc_env(), &none.to_string()).ok();
    assert!(handles(&net).is_empty());
}

#[test]
fn a_block_pointing_past_its_attributes_is_an_error_not_a_panic() {
    let net = Net::new("mynet");
    let conf = net.conf("1.0.0", pool26());
    net.run("ADD", "c1", &conf).ok();
    corrupt(&net, "IPAMBlock", |b| b["allocations"][0] = json!(7));
    let before = net.dump();
    let reply = net.run("ADD", "c2", &conf);
    refused(&reply);
    assert_eq!(net.dump(), before, "a corrupt block was written");
    // DEL of the owner of the corrupt slot does not panic either.
    let reply = net.run("DEL", "c1", &conf);
    assert_ne!(reply.status, Some(101), "{reply:?}");
    assert_eq!(net.dump().of_kind("IPAMBlock").count(), 1);
}

#[test]
fn a_free_ordinal_listed_twice_is_never_handed_out_twice() {
    let net = Net::new("mynet");
    let conf = net.conf("1.0.0", pool26());
    net.run("ADD", "c1", &conf).ok();
    corrupt(&net, "IPAMBlock", |b| {
        let head = b["unallocated"][0].clone();
        b["unallocated"].as_array_mut().unwrap().insert(0, head);
    });
    let before = net.dump();
    refused(&net.run("ADD", "c2", &conf));
    assert_eq!(net.dump(), before);
}

#[test]
fn a_pool_selector_with_multibyte_characters_is_an_error_not_a_panic() {
    let net = Net::new("mynet");
    let conf = net.conf("1.0.0", pool26());
    net.run("ADD", "c1", &conf).ok();
    // Without pools named, every pool's selector is evaluated: a broken one fails closed.
    let any_pool = net.conf("1.0.0", json!({}));
    for selector in ["zone ééé", "zone é€", "all() && k é€"] {
        corrupt(&net, "IPPool", |p| p["nodeSelector"] = json!(selector));
        let before = net.dump();
        refused(&net.run("ADD", "c2", &any_pool));
        assert_eq!(net.dump(), before, "{selector}");
    }
    // A pool named in the config is used whatever its selector says, as by Calico.
    net.run("ADD", "c3", &conf).ok();
}

#[test]
fn special_pools_are_refused() {
    for cidr in [
        "0.0.0.0/0",
        "::/0",
        "127.0.0.0/24",
        "224.0.0.0/24",
        "169.254.0.0/24",
        "fe80::/64",
        "ff02::/120",
    ] {
        let net = Net::new("mynet");
        let v6 = cidr.contains(':');
        let ipam = if v6 {
            json!({"ipv6_pools": [cidr], "assign_ipv4": "false", "assign_ipv6": "true"})
        } else {
            json!({"ipv4_pools": [cidr]})
        };
        let reply = net.run("ADD", "c1", &net.conf("1.0.0", ipam));
        assert_eq!(refused(&reply), 7, "{cidr}");
        assert!(reply.stdout.contains("special"), "{cidr}: {reply:?}");
        assert_eq!(net.dump().of_kind("IPPool").count(), 0, "{cidr}");
        assert_eq!(net.dump().allocated(), 0, "{cidr}");
    }
}

#[test]
fn requests_outside_the_spec_bounds_change_nothing() {
    let net = Net::new("mynet");
    let conf = net.conf("1.0.0", pool26());
    net.run("ADD", "c1", &conf).ok();
    let before = net.dump();
    let bad_ids = ["-lead", "a/b", "a b", "é", ""];
    for id in bad_ids {
        let reply = run(&container_env("ADD", id, "eth0"), &conf.to_string());
        assert_eq!(refused(&reply), 4, "container ID {id:?}");
    }
    let long_ifname = "x".repeat(16);
    for ifname in [".", "..", "a/b", "a:b", "a b", long_ifname.as_str()] {
        let reply = run(&container_env("ADD", "c2", ifname), &conf.to_string());
        assert_eq!(refused(&reply), 4, "ifname {ifname:?}");
    }
    let mut args = container_env("ADD", "c2", "eth0");
    args.push(("CNI_ARGS".into(), "K8S_POD_NAME;=x".into()));
    let reply = run(&args, &conf.to_string());
    assert_eq!(refused(&reply), 4, "{reply:?}");
    let mut big = conf.clone();
    big["padding"] = json!("x".repeat(1 << 20));
    assert_eq!(refused(&net.run("ADD", "c2", &big)), 7);
    assert_eq!(net.dump(), before);
}
