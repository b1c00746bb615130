//! The plugin's own metrics end to end: real plugin processes record their ADDs and DELs in
//! the stats file beside the database, and `ipamctl serve`'s `/metrics` (read with curl)
//! renders them as a latency histogram and a conflict counter beside the datastore's counts.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cni_support;

use std::process::Command;

use cni_support::Net;
use ipam_apiserver::{Running, ServeOptions};
use serde_json::json;

fn scrape(addr: std::net::SocketAddr) -> String {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-w", "\n%{http_code}"])
        .arg(format!("http://{addr}/metrics"))
        .output()
        .expect("curl is needed for this test (scripts/install-deps)");
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, code) = text.rsplit_once('\n').unwrap();
    assert_eq!(code, "200", "{body}");
    body.to_owned()
}

fn value(body: &str, series: &str) -> f64 {
    let line = body
        .lines()
        .find(|l| l.rsplit_once(' ').is_some_and(|(s, _)| s == series))
        .unwrap_or_else(|| panic!("no {series} in\n{body}"));
    line.rsplit_once(' ').unwrap().1.parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_operations_show_on_serve_metrics() {
    let net = Net::new("metrics-net");
    let conf = net.conf("1.1.0", json!({"ipv4_pools": ["10.77.0.0/24"]}));
    for id in ["m1", "m2", "m3"] {
        net.run("ADD", id, &conf).ok();
    }
    net.run("DEL", "m1", &conf).ok();
    // Refused by the allocator, after the store was opened: an ADD that ended in error.
    let missing = net.conf("1.1.0", json!({"ipv4_pools": ["no-such-pool"]}));
    let failed = net.run("ADD", "m4", &missing);
    assert_ne!(failed.code(), 0, "{:?}", failed);

    let stats = net.db.with_extension("db.stats");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&stats).unwrap().permissions());
    assert_eq!(mode & 0o7777, 0o600, "the stats file is private");

    let store = ipam_sqlite::SqliteStore::open(&net.db).unwrap();
    let options = ServeOptions {
        plugin_stats: Some(stats.clone()),
        ..ServeOptions::default()
    };
    let api = Running::start("127.0.0.1:0", store, options).await.unwrap();
    let body = scrape(api.addr());
    for line in [
        "# TYPE ipam_cni_operation_duration_seconds histogram",
        "# TYPE ipam_cni_cas_conflicts counter",
        // Alone on its store, the plugin never loses a race.
        "ipam_cni_cas_conflicts_total{operation=\"add\"} 0",
        "ipam_cni_cas_conflicts_total{operation=\"del\"} 0",
        // The datastore's own counts are still there: two addresses in use.
        "ipam_allocations_in_use{ippool=\"10-77-0-0-24\",node=\"node-1\"} 2",
    ] {
        assert!(body.lines().any(|l| l == line), "no {line:?} in\n{body}");
    }
    let series = |op: &str, outcome: &str, suffix: &str, le: Option<&str>| match le {
        Some(le) => format!(
            "ipam_cni_operation_duration_seconds_{suffix}{{le=\"{le}\",operation=\"{op}\",outcome=\"{outcome}\"}}"
        ),
        None => format!(
            "ipam_cni_operation_duration_seconds_{suffix}{{operation=\"{op}\",outcome=\"{outcome}\"}}"
        ),
    };
    assert_eq!(value(&body, &series("add", "ok", "count", None)), 3.0);
    assert_eq!(
        value(&body, &series("add", "ok", "bucket", Some("+Inf"))),
        3.0
    );
    assert_eq!(value(&body, &series("del", "ok", "count", None)), 1.0);
    assert_eq!(value(&body, &series("add", "error", "count", None)), 1.0);
    let sum = value(&body, &series("add", "ok", "sum", None));
    assert!(sum > 0.0 && sum < 3.0 * 30.0, "three ADDs took {sum} s");

    // A damaged file costs the plugin's series, not the scrape.
    std::fs::write(&stats, b"{\"operations\": 7}").unwrap();
    let body = scrape(api.addr());
    assert!(!body.contains("ipam_cni_"), "{body}");
    assert!(body.contains("ipam_allocations_in_use{"), "{body}");
    // And the next plugin run starts the totals again.
    net.run("DEL", "m2", &conf).ok();
    let body = scrape(api.addr());
    assert_eq!(value(&body, &series("del", "ok", "count", None)), 1.0);
}
