//! `KubeStore` against a real kube-apiserver (built by `scripts/build-peers`): the project's
//! CRDs are accepted and Established, the datastore conformance suite passes, and the
//! seed's Calico objects and objects with every field set come back from the server exactly
//! as written (anything the server prunes or defaults is a schema bug).
//!
//! One server per test function (startup is several seconds); the checks on it run one
//! after another on a clean slate, and every failing check is reported, not only the first.

// A failed unwrap is a failed check.
#![allow(clippy::unwrap_used)]

use std::future::Future;
use std::time::Instant;

use futures::FutureExt as _;
use ipam_core::{
    BlockAffinity, Datastore, IpPool, IpReservation, IpamBlock, IpamConfig, IpamHandle,
};
use ipam_k8s::KubeStore;
use ipam_tests::apiserver::{ADMIN, KubeApiServer};
use kube::api::{DynamicObject, PostParams};
use serde_json::{Value, json};

/// Runs `check` and returns its panic message, if it panicked.
async fn outcome(name: &str, check: impl Future<Output = ()>) -> Option<String> {
    let t = Instant::now();
    let r = std::panic::AssertUnwindSafe(check).catch_unwind().await;
    eprintln!(
        "{name}: {} in {:.1?}",
        if r.is_ok() { "ok" } else { "FAILED" },
        t.elapsed()
    );
    r.err().map(|p| {
        p.downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| "a panic without a message".to_owned())
    })
}

/// The checks of [`ipam_tests::conformance_checks`], each on an empty store (that list leaves
/// out `operation_counters` for the reason `k8s_conformance.rs` gives: a refused create costs
/// KubeStore a second round trip by design).
macro_rules! conformance {
    ($server:expr; $($check:ident),* $(,)?) => {{
        let mut failed = Vec::new();
        $(
            $server.delete_all_objects().await;
            let store: KubeStore = $server.store(ADMIN).await;
            if let Some(msg) = outcome(
                stringify!($check),
                ipam_tests::conformance::$check(store),
            ).await {
                failed.push(format!("{}: {msg}", stringify!($check)));
            }
        )*
        failed
    }};
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conformance_suite_on_a_real_api_server() {
    let server = KubeApiServer::start().await;
    server.install_crds().await;
    let failed = ipam_tests::conformance_checks!([conformance] server;);
    assert!(failed.is_empty(), "failed checks:\n{}", failed.join("\n"));
}

/// A fixture from `ipam-core/tests/fixtures`, as a `crd.projectcalico.org/v1` object to
/// create: server-owned metadata dropped (the IPPool fixture is Calico's v3 API object,
/// whose spec is the same).
fn fixture(file: &str) -> Value {
    let path = format!(
        "{}/../ipam-core/tests/fixtures/{file}",
        env!("CARGO_MANIFEST_DIR")
    );
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    v["apiVersion"] = json!("crd.projectcalico.org/v1");
    let meta = v["metadata"].as_object_mut().unwrap();
    for k in ["resourceVersion", "uid", "creationTimestamp", "generation"] {
        meta.remove(k);
    }
    v
}

/// Every field of each kind's spec set (as the model writes it back), one object per kind.
fn full_objects() -> Vec<(&'static str, Value)> {
    fn obj<R: ipam_core::Resource>(name: &str, spec: Value) -> (&'static str, Value) {
        // The spec must be one the model reads and writes back unchanged.
        let model: R = serde_json::from_value(spec.clone()).unwrap();
        assert_eq!(serde_json::to_value(&model).unwrap(), spec, "{}", R::KIND);
        let def = ipam_k8s::ResourceDef::of(R::KIND);
        let v = json!({"apiVersion": "crd.projectcalico.org/v1", "kind": def.kind_name(),
                       "metadata": {"name": name}, "spec": spec});
        (def.plural(), v)
    }
    vec![
        obj::<IpPool>(
            "full-pool",
            json!({"cidr": "10.0.0.0/16", "blockSize": 24, "nodeSelector": "all()",
                   "namespaceSelector": "a == 'b'", "disabled": true,
                   "allowedUses": ["Workload", "LoadBalancer"], "assignmentMode": "Manual",
                   "natOutgoing": true, "ipipMode": "Always", "vxlanMode": "Never",
                   "disableBGPExport": true}),
        ),
        obj::<IpamBlock>(
            "10-0-0-0-30",
            json!({"cidr": "10.0.0.0/30", "affinity": "host:n1",
                   "affinityClaimTime": "2024-01-01T00:00:00Z",
                   "allocations": [0, null, 0, null], "unallocated": [1, 3],
                   "attributes": [{"handle_id": "h", "secondary": {"node": "n1", "pod": "p"},
                                   "alternateOwnerAttrs": {"node": "n2", "pod": "p2"},
                                   "releasedAt": "2024-01-01T00:00:00Z"}],
                   "sequenceNumber": 1_722_000_000_000_000_000_i64,
                   "sequenceNumberForAllocation": {"0": 3, "2": 4},
                   "deleted": false, "strictAffinity": false}),
        ),
        obj::<BlockAffinity>(
            "n1-10-0-0-0-26",
            json!({"cidr": "10.0.0.0/26", "node": "n1", "state": "confirmed",
                   "type": "host", "deleted": "false"}),
        ),
        obj::<IpamHandle>(
            "full-handle",
            json!({"handleID": "full-handle", "block": {"10.0.0.0/26": 2}, "deleted": false}),
        ),
        obj::<IpamConfig>(
            "default",
            json!({"strictAffinity": true, "autoAllocateBlocks": false,
                   "maxBlocksPerHost": 4, "ipCooldownSeconds": 30}),
        ),
        obj::<IpReservation>(
            "full-reservation",
            json!({"reservedCIDRs": ["10.0.0.5", "10.0.1.0/24"]}),
        ),
    ]
}

/// The update a round trip makes: every boolean of the spec flipped.
fn flip_booleans(spec: &mut Value) {
    for (_, v) in spec.as_object_mut().unwrap().iter_mut() {
        if let Some(b) = v.as_bool() {
            *v = json!(!b);
        }
    }
}

/// The paths where `got` differs from `want`, field by field.
fn differences(want: &Value, got: &Value, path: &str, out: &mut Vec<String>) {
    match (want, got) {
        (Value::Object(w), Value::Object(g)) => {
            for (k, wv) in w {
                match g.get(k) {
                    Some(gv) => differences(wv, gv, &format!("{path}.{k}"), out),
                    None => out.push(format!("{path}.{k}: pruned (was {wv})")),
                }
            }
            for (k, gv) in g {
                if !w.contains_key(k) {
                    out.push(format!("{path}.{k}: added by the server ({gv})"));
                }
            }
        }
        (Value::Array(w), Value::Array(g)) if w.len() == g.len() => {
            for (i, (wv, gv)) in w.iter().zip(g).enumerate() {
                differences(wv, gv, &format!("{path}[{i}]"), out);
            }
        }
        _ if want != got => out.push(format!("{path}: wrote {want}, read {got}")),
        _ => {}
    }
}

/// Creates `obj`, reads it back, updates it with `change` applied to its spec, reads it
/// back again; returns every difference between what was written and what was read.
async fn round_trip(
    server: &KubeApiServer,
    plural: &str,
    obj: Value,
    change: fn(&mut Value),
) -> Vec<String> {
    let api = server.ipam_api(ADMIN, plural).await;
    let name = obj["metadata"]["name"].as_str().unwrap().to_owned();
    let mut diffs = Vec::new();
    let dynamic: DynamicObject = serde_json::from_value(obj.clone()).unwrap();
    let created = api.create(&PostParams::default(), &dynamic).await;
    let created = match created {
        Ok(c) => c,
        Err(e) => return vec![format!("{plural}/{name}: create refused: {e}")],
    };
    differences(
        &obj["spec"],
        &created.data["spec"],
        &format!("{plural}/{name} create: spec"),
        &mut diffs,
    );
    let read = api.get(&name).await.unwrap();
    differences(
        &obj["spec"],
        &read.data["spec"],
        &format!("{plural}/{name} get: spec"),
        &mut diffs,
    );
    let mut updated = serde_json::to_value(&read).unwrap();
    change(&mut updated["spec"]);
    let want = updated["spec"].clone();
    let dynamic: DynamicObject = serde_json::from_value(updated).unwrap();
    match api.replace(&name, &PostParams::default(), &dynamic).await {
        Ok(_) => {
            let read = api.get(&name).await.unwrap();
            differences(
                &want,
                &read.data["spec"],
                &format!("{plural}/{name} update: spec"),
                &mut diffs,
            );
        }
        Err(e) => diffs.push(format!("{plural}/{name}: update refused: {e}")),
    }
    diffs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_round_trip_through_a_real_api_server_unpruned() {
    let server = KubeApiServer::start().await;
    server.install_crds().await;
    let mut diffs = Vec::new();

    // The seed document's objects, as Calico wrote them.
    for (plural, file) in [
        ("ipamblocks", "ipamblock-192-168-185-0-26-before-nginx.json"),
        ("ipamhandles", "ipamhandle-nginx.json"),
        ("ippools", "ippool-default-ipv4-ippool.json"),
    ] {
        diffs.extend(round_trip(&server, plural, fixture(file), flip_booleans).await);
    }
    // The block after nginx was placed: an update of the one before, read back.
    let api = server.ipam_api(ADMIN, "ipamblocks").await;
    let after = fixture("ipamblock-192-168-185-0-26-after-nginx.json");
    let mut current = serde_json::to_value(api.get("192-168-185-0-26").await.unwrap()).unwrap();
    current["spec"] = after["spec"].clone();
    api.replace(
        "192-168-185-0-26",
        &PostParams::default(),
        &serde_json::from_value(current).unwrap(),
    )
    .await
    .unwrap();
    let read = api.get("192-168-185-0-26").await.unwrap();
    differences(
        &after["spec"],
        &read.data["spec"],
        "ipamblocks after nginx: spec",
        &mut diffs,
    );

    // Every optional field set, then every boolean flipped.
    for (plural, obj) in full_objects() {
        diffs.extend(round_trip(&server, plural, obj, flip_booleans).await);
    }
    assert!(
        diffs.is_empty(),
        "the server changed what was written:\n{}",
        diffs.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubestore_reads_back_what_it_wrote_on_a_real_api_server() {
    // The same objects through KubeStore: model in, model out, as the plugin and ipamctl do.
    let server = KubeApiServer::start().await;
    server.install_crds().await;
    let store = server.store(ADMIN).await;
    async fn check<R: ipam_core::Resource + PartialEq + std::fmt::Debug>(
        store: &KubeStore,
        name: &str,
        spec: &Value,
    ) {
        let value: R = serde_json::from_value(spec.clone()).unwrap();
        store.create(name, value.clone()).await.unwrap();
        let back = store.get::<R>(name).await.unwrap();
        assert_eq!(back.value, value, "{} {name}", R::KIND);
    }
    for (plural, obj) in full_objects() {
        let name = obj["metadata"]["name"].as_str().unwrap();
        let spec = &obj["spec"];
        match plural {
            "ippools" => check::<IpPool>(&store, name, spec).await,
            "ipamblocks" => check::<IpamBlock>(&store, name, spec).await,
            "blockaffinities" => check::<BlockAffinity>(&store, name, spec).await,
            "ipamhandles" => check::<IpamHandle>(&store, name, spec).await,
            "ipamconfigs" => check::<IpamConfig>(&store, name, spec).await,
            "ipreservations" => check::<IpReservation>(&store, name, spec).await,
            other => panic!("unexpected kind {other}"),
        }
    }
}
