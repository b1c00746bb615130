//! `ipamctl pool`, `config`, `show` and `release` against a SQLite store.
#![allow(clippy::unwrap_used)]

mod support;

use ipam_core::IpReservation;
use support::{Fixture, block_on};

#[test]
fn pools_are_created_listed_fetched_and_deleted() {
    let f = Fixture::new();
    let text = f.expect(
        0,
        &[
            "pool",
            "create",
            "pods",
            "--cidr",
            "10.244.0.0/16",
            "--block-size",
            "24",
            "--allowed-uses",
            "Workload,LoadBalancer",
        ],
    );
    assert!(text.starts_with("NAME   CIDR"), "{text}");
    f.expect(
        0,
        &[
            "pool",
            "create",
            "v6",
            "--cidr",
            "fd00:10::/64",
            "--assignment-mode",
            "manual",
            "--disabled",
            "--node-selector",
            "zone == 'a'",
        ],
    );
    let list = f.json(0, &["pool", "list"]);
    assert_eq!(list["kind"], "List");
    assert_eq!(list["items"].as_array().unwrap().len(), 2);
    let pods = f.json(0, &["pool", "get", "10.244.0.0/16"]);
    assert_eq!(pods["apiVersion"], "crd.projectcalico.org/v1");
    assert_eq!(pods["kind"], "IPPool");
    assert_eq!(pods["metadata"]["name"], "pods");
    assert_eq!(pods["spec"]["blockSize"], 24);
    assert_eq!(
        pods["spec"]["allowedUses"],
        serde_json::json!(["Workload", "LoadBalancer"])
    );
    let v6 = f.expect(0, &["pool", "get", "v6", "-o", "yaml"]);
    assert!(v6.contains("assignmentMode: Manual"), "{v6}");
    assert!(v6.contains("disabled: true"), "{v6}");
    assert!(v6.contains("nodeSelector: zone == 'a'"), "{v6}");
    // Overlaps, bad block sizes and unknown pools are refused with a message and status 2.
    let out = f.run(&["pool", "create", "dup", "--cidr", "10.244.1.0/24"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("overlaps pool \"pods\""));
    assert_eq!(
        f.run(&[
            "pool",
            "create",
            "x",
            "--cidr",
            "10.1.0.0/16",
            "--block-size",
            "8"
        ])
        .status
        .code(),
        Some(2)
    );
    assert_eq!(f.run(&["pool", "get", "nope"]).status.code(), Some(2));
    // A pool in use is deleted only with --release.
    f.assign("n1", 2, "c1", "a");
    let out = f.run(&["pool", "delete", "pods"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("2 addresses in use"));
    f.expect(0, &["pool", "delete", "pods", "--release"]);
    f.expect(0, &["pool", "delete", "v6"]);
    assert_eq!(f.json(0, &["pool", "list"])["items"], serde_json::json!([]));
    f.expect(0, &["check"]);
}

#[test]
fn config_is_read_and_changed_with_validation() {
    let f = Fixture::new();
    f.ipam(); // an empty database: reading a missing one is an error
    let c = f.json(0, &["config", "get"]);
    assert_eq!(c["autoAllocateBlocks"], true);
    assert_eq!(c["strictAffinity"], false);
    let out = f.run(&["config", "set", "--max-blocks-per-host", "4"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("requires strictAffinity"));
    let c = f.json(
        0,
        &[
            "config",
            "set",
            "--strict-affinity",
            "true",
            "--max-blocks-per-host",
            "4",
        ],
    );
    assert_eq!(c["maxBlocksPerHost"], 4);
    let c = f.json(0, &["config", "set", "--ip-cooldown-seconds", "30"]);
    assert_eq!(
        c["maxBlocksPerHost"], 4,
        "fields not named keep their values"
    );
    assert_eq!(c["ipCooldownSeconds"], 30);
    assert_eq!(
        f.run(&["config", "set", "--ip-cooldown-seconds", "1201"])
            .status
            .code(),
        Some(2)
    );
    let text = f.expect(0, &["config", "get"]);
    assert!(text.contains("ipCooldownSeconds    30"), "{text}");
}

#[test]
fn show_reports_usage_addresses_and_handles() {
    let f = Fixture::new();
    f.pool("10.0.0.0/24", 29);
    let ips = f.assign("n1", 3, "c1", "a");
    f.assign("n2", 1, "c2", "b");
    block_on(f.ipam().create_reservation(
        "gw",
        IpReservation {
            reserved_cidrs: vec!["10.0.0.254".into()],
        },
    ))
    .unwrap();
    let usage = f.json(0, &["show", "--show-blocks"]);
    let pool = &usage[0];
    assert_eq!(pool["capacity"], 256);
    assert_eq!(pool["inUse"], 4);
    assert_eq!(pool["reserved"], 1);
    assert_eq!(pool["available"], 251);
    let blocks = pool["blocks"].as_array().unwrap();
    assert_eq!(blocks.len(), 2);
    assert!(
        blocks
            .iter()
            .any(|b| b["node"] == "host:n1" && b["inUse"] == 3)
    );
    let table = f.expect(0, &["show", "--show-blocks"]);
    assert!(
        table.contains("POOL   CIDR          CAPACITY   IN USE"),
        "{table}"
    );
    assert!(table.contains("host:n2"), "{table}");

    let ip = ips[0].addr().to_string();
    let held = f.json(0, &["show", "--ip", &ip]);
    assert_eq!(held["state"], "in-use");
    assert_eq!(held["handle"], "k8s-pod-network.c1");
    assert_eq!(held["attributes"]["pod"], "a");
    assert!(held["sequence"].is_u64());
    assert_eq!(
        f.json(0, &["show", "--ip", "10.0.0.254"])["state"],
        "reserved"
    );
    assert_eq!(
        f.json(0, &["show", "--ip", "10.9.9.9"])["state"],
        "not-in-pool"
    );

    let mine = f.json(0, &["show", "--handle", "k8s-pod-network.c1"]);
    assert_eq!(mine["addresses"].as_array().unwrap().len(), 3);
    assert_eq!(
        f.run(&["show", "--handle", "k8s-pod-network.none"])
            .status
            .code(),
        Some(2)
    );
}

#[test]
fn release_by_address_honours_the_sequence_number() {
    let f = Fixture::new();
    f.pool("10.0.0.0/24", 29);
    let ip = f.assign("n1", 1, "c1", "a")[0].addr().to_string();
    f.assign("n1", 2, "c2", "b");
    let seq = f.json(0, &["show", "--ip", &ip])["sequence"]
        .as_u64()
        .unwrap();
    let stale = (seq + 1).to_string();
    let refused = f.json(1, &["release", "--ip", &ip, "--sequence", &stale]);
    assert!(
        refused[0]["result"]
            .as_str()
            .unwrap()
            .starts_with("skipped: reallocated")
    );
    let wrong_owner = f.json(
        1,
        &["release", "--ip", &ip, "--handle", "k8s-pod-network.c2"],
    );
    assert!(
        wrong_owner[0]["result"]
            .as_str()
            .unwrap()
            .contains("k8s-pod-network.c1")
    );
    let done = f.json(0, &["release", "--ip", &ip, "--sequence", &seq.to_string()]);
    assert_eq!(done[0]["result"], "released");
    assert_eq!(f.json(0, &["show", "--ip", &ip])["state"], "free");
    assert_eq!(
        f.json(0, &["release", "--ip", &ip])[0]["result"],
        "not allocated"
    );
    // By handle: every address of it, and the handle is gone.
    let text = f.expect(0, &["release", "--handle", "k8s-pod-network.c2"]);
    assert_eq!(text.lines().count(), 3, "{text}");
    assert_eq!(
        f.run(&["release", "--handle", "k8s-pod-network.c2"])
            .status
            .code(),
        Some(2)
    );
    f.expect(0, &["check"]);
    // Usage errors come from clap with status 2.
    assert_eq!(f.run(&["release"]).status.code(), Some(2));
    assert_eq!(
        f.run(&["release", "--sequence", "3"]).status.code(),
        Some(2)
    );
}

#[test]
fn an_unknown_datastore_is_a_clear_error() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ipamctl"))
        .args(["--datastore", "etcdv9:x", "show"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("etcdv9:x"));
}

#[test]
fn reading_a_database_that_does_not_exist_says_so_and_creates_nothing() {
    let f = Fixture::new();
    for args in [
        &["show"][..],
        &["check"],
        &["pool", "list"],
        &["config", "get"],
    ] {
        let out = f.run(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("no IPAM database at"), "{args:?}: {err}");
        assert!(!f.db.exists(), "{args:?} created {}", f.db.display());
    }
    // Creating a pool creates the database.
    f.expect(0, &["pool", "create", "p", "--cidr", "10.244.0.0/24"]);
    assert!(f.db.exists());
    f.expect(0, &["show"]);
}

#[test]
fn errors_keep_the_os_cause() {
    let f = Fixture::new();
    f.expect(0, &["pool", "create", "p", "--cidr", "10.244.0.0/24"]);
    let missing = f.db.with_file_name("no-such-list.txt");
    let out = f.run(&["check", "--live", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    let want = format!(
        "cannot read {}: No such file or directory (os error 2)",
        missing.display()
    );
    assert!(err.contains(&want), "{err}");
    // A cause the message itself leaves out (the password file's error names only the
    // file) comes from the error's source chain.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ipamctl"))
        .args(["--datastore", "etcdv3:http://127.0.0.1:1", "show"])
        .args(["--etcd-username", "u", "--etcd-password-file"])
        .arg(f.db.parent().unwrap())
        .env_remove("IPAM_DATASTORE")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot read the etcd password file") && err.contains("Is a directory"),
        "{err}"
    );
}
