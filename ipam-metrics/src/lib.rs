//! Prometheus metrics of an IPAM datastore, for the controller's and `ipamctl serve`'s
//! `/metrics`.
//!
//! The names and labels are Calico kube-controllers' (`ipam_ippool_size`,
//! `ipam_allocations_in_use`, `ipam_allocations_borrowed`, `ipam_blocks`, the `_per_node`
//! forms, `ipam_allocations_gc_candidates`, `ipam_allocations_gc_reclamations`), so Calico's
//! dashboards and alerts work unchanged; `ipam_gc_releases` (by reason) and
//! `ipam_controller_leader` are ours. The counts come from [`ipam_core::check::tally`] over
//! one snapshot: every update replaces them all, so a scrape never mixes two snapshots.
//! The text is OpenMetrics, in which a counter's sample carries a `_total` suffix. The CNI
//! plugin's own latency and conflicts come from its stats file ([`plugin`]).

pub mod plugin;

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, PoisonError};

use ipam_core::check::{PoolNode, Tally};
use ipam_core::stats::PluginStats;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// The content type of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

type Labels = Vec<(&'static str, String)>;
type Count = Family<Labels, Gauge>;

/// Why the controller released something (the `reason` label of `ipam_gc_releases`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GcReason {
    /// An address whose pod no longer exists.
    PodDeleted,
    /// A tunnel address, an empty block, or an affinity without a block, of a node that no
    /// longer exists.
    NodeDeleted,
}

/// The registry and every metric in it.
pub struct Metrics {
    registry: Registry,
    usage: Usage,
    gc: Option<GcMetrics>,
    plugin: Arc<plugin::PluginOps>,
    // Held while the gauges are replaced and while they are encoded, so that a scrape sees
    // one snapshot whole.
    consistent: Mutex<()>,
}

/// The gauges computed from a snapshot.
#[derive(Default)]
struct Usage {
    pool_size: Family<Labels, Gauge<f64, AtomicU64>>,
    in_use: Count,
    borrowed: Count,
    blocks: Count,
    blocks_per_node: Count,
    in_use_per_node: Count,
    borrowed_per_node: Count,
}

/// What only the controller knows: its garbage collection and its leadership.
#[derive(Default)]
pub struct GcMetrics {
    candidates: Count,
    reclamations: Family<Labels, Counter>,
    releases: Family<Labels, Counter>,
    leader: Gauge,
}

impl Metrics {
    /// The usage metrics alone (`ipamctl serve`).
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let usage = Usage::default();
        usage.register(&mut registry);
        let plugin = Arc::new(plugin::PluginOps::default());
        registry.register_collector(Box::new(plugin.clone()));
        Metrics {
            registry,
            usage,
            gc: None,
            plugin,
            consistent: Mutex::new(()),
        }
    }

    /// The usage metrics and the controller's own.
    pub fn with_gc() -> Self {
        let mut m = Metrics::new();
        let gc = GcMetrics::default();
        gc.register(&mut m.registry);
        m.gc = Some(gc);
        m
    }

    /// The controller's metrics, when registered ([`Metrics::with_gc`]).
    pub fn gc(&self) -> Option<&GcMetrics> {
        self.gc.as_ref()
    }

    /// Replaces every usage gauge with the counts of `tally`.
    pub fn observe(&self, tally: &Tally) {
        let _whole = self
            .consistent
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let u = &self.usage;
        u.pool_size.clear();
        for (pool, size) in &tally.pool_size {
            let labels = vec![("ippool", pool.clone())];
            u.pool_size.get_or_create(&labels).set(*size as f64);
        }
        set_pool_node(&u.in_use, &tally.in_use);
        set_pool_node(&u.borrowed, &tally.borrowed);
        set_pool_node(&u.blocks, &tally.blocks);
        set_node(&u.in_use_per_node, &Tally::per_node(&tally.in_use));
        set_node(&u.borrowed_per_node, &Tally::per_node(&tally.borrowed));
        set_node(&u.blocks_per_node, &Tally::per_node(&tally.blocks));
    }

    /// Replaces the CNI plugin's totals (read with [`plugin::read_stats_file`]).
    pub fn observe_plugin(&self, stats: PluginStats) {
        self.plugin.set(stats);
    }

    /// The OpenMetrics text of every metric ([`CONTENT_TYPE`]).
    pub fn render(&self) -> String {
        let _whole = self
            .consistent
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut out = String::new();
        // Writing into a String cannot fail; an encoder error would leave a partial text,
        // which is still better than none for a scrape.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Usage {
    fn register(&self, r: &mut Registry) {
        r.register(
            "ipam_ippool_size",
            "Number of IP addresses in the IP pool's CIDR",
            self.pool_size.clone(),
        );
        r.register(
            "ipam_allocations_in_use",
            "Number of IP allocations in use by a workload or interface, by the node it was made on",
            self.in_use.clone(),
        );
        r.register(
            "ipam_allocations_borrowed",
            "Number of IP allocations in use from a block affine to another node",
            self.borrowed.clone(),
        );
        r.register(
            "ipam_blocks",
            "Number of IPAM blocks, by the node they are affine to",
            self.blocks.clone(),
        );
        r.register(
            "ipam_blocks_per_node",
            "Number of IPAM blocks affine to each node",
            self.blocks_per_node.clone(),
        );
        r.register(
            "ipam_allocations_per_node",
            "Number of IP allocations in use, by the node they were made on",
            self.in_use_per_node.clone(),
        );
        r.register(
            "ipam_allocations_borrowed_per_node",
            "Number of IP allocations borrowed from another node's block, by node",
            self.borrowed_per_node.clone(),
        );
    }
}

impl GcMetrics {
    fn register(&self, r: &mut Registry) {
        r.register(
            "ipam_allocations_gc_candidates",
            "Number of IP allocations the garbage collector holds as possible leaks, waiting out the grace period",
            self.candidates.clone(),
        );
        r.register(
            "ipam_allocations_gc_reclamations",
            "IP allocations released by the garbage collector",
            self.reclamations.clone(),
        );
        r.register(
            "ipam_gc_releases",
            "Objects released by the garbage collector, by reason (pod_deleted: addresses; node_deleted: tunnel addresses, empty blocks and affinities)",
            self.releases.clone(),
        );
        r.register(
            "ipam_controller_leader",
            "1 while this controller holds the leader lease, else 0",
            self.leader.clone(),
        );
    }

    /// Replaces the candidate counts.
    pub fn set_candidates(&self, counts: &BTreeMap<PoolNode, u64>) {
        set_pool_node(&self.candidates, counts);
    }

    /// Counts one address released for `reason` (its pod is gone, or it was the tunnel
    /// address of a node that is gone).
    pub fn reclaimed(&self, at: &PoolNode, reason: GcReason) {
        self.reclamations.get_or_create(&pool_node(at)).inc();
        self.released(reason);
    }

    /// Counts one object released for `reason`.
    pub fn released(&self, reason: GcReason) {
        let label = match reason {
            GcReason::PodDeleted => "pod_deleted",
            GcReason::NodeDeleted => "node_deleted",
        };
        self.releases
            .get_or_create(&vec![("reason", label.to_owned())])
            .inc();
    }

    /// Records whether this controller leads.
    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }
}

fn pool_node(k: &PoolNode) -> Labels {
    vec![("ippool", k.pool.clone()), ("node", k.node.clone())]
}

fn gauge_value(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn set_pool_node(family: &Count, counts: &BTreeMap<PoolNode, u64>) {
    family.clear();
    for (k, n) in counts {
        family.get_or_create(&pool_node(k)).set(gauge_value(*n));
    }
}

fn set_node(family: &Count, counts: &BTreeMap<&str, u64>) {
    family.clear();
    for (node, n) in counts {
        let labels = vec![("node", (*node).to_owned())];
        family.get_or_create(&labels).set(gauge_value(*n));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_calico_names_with_types_and_values() {
        let key = |pool: &str, node: &str| PoolNode {
            pool: pool.into(),
            node: node.into(),
        };
        let mut t = Tally::default();
        t.pool_size.insert("default".into(), 256);
        t.in_use.insert(key("default", "n1"), 3);
        t.borrowed.insert(key("default", "n1"), 1);
        t.blocks.insert(key("default", "n1"), 2);
        let m = Metrics::with_gc();
        m.observe(&t);
        m.gc()
            .unwrap()
            .reclaimed(&key("default", "n1"), GcReason::PodDeleted);
        let text = m.render();
        for line in [
            "# TYPE ipam_ippool_size gauge",
            "ipam_ippool_size{ippool=\"default\"} 256.0",
            "ipam_allocations_in_use{ippool=\"default\",node=\"n1\"} 3",
            "ipam_allocations_borrowed_per_node{node=\"n1\"} 1",
            "ipam_blocks_per_node{node=\"n1\"} 2",
            "# TYPE ipam_allocations_gc_reclamations counter",
            "ipam_allocations_gc_reclamations_total{ippool=\"default\",node=\"n1\"} 1",
            "ipam_gc_releases_total{reason=\"pod_deleted\"} 1",
            "ipam_controller_leader 0",
            "# EOF",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        assert!(
            !text.contains("ipam_cni_"),
            "no plugin totals were given:\n{text}"
        );
        // A new snapshot replaces the old counts: a node that is gone disappears.
        m.observe(&Tally::default());
        assert!(!m.render().contains("node=\"n1\"} 3"));
    }

    #[test]
    fn renders_the_plugin_totals_as_a_histogram_and_a_counter() {
        use ipam_core::stats::{Outcome, Sample};
        let mut stats = PluginStats::default();
        let mut sample = |operation, outcome, seconds, conflicts| {
            stats.record(Sample {
                operation,
                outcome,
                seconds,
                conflicts,
            })
        };
        sample("add", Outcome::Ok, 0.0015, 2);
        sample("add", Outcome::Ok, 0.03, 0);
        sample("add", Outcome::Error, 0.3, 1);
        sample("del", Outcome::Ok, 0.0004, 0);
        let m = Metrics::new();
        m.observe_plugin(stats);
        let text = m.render();
        for line in [
            "# TYPE ipam_cni_operation_duration_seconds histogram",
            "ipam_cni_operation_duration_seconds_count{operation=\"add\",outcome=\"ok\"} 2",
            "ipam_cni_operation_duration_seconds_bucket{le=\"0.001\",operation=\"add\",outcome=\"ok\"} 0",
            "ipam_cni_operation_duration_seconds_bucket{le=\"0.002\",operation=\"add\",outcome=\"ok\"} 1",
            "ipam_cni_operation_duration_seconds_bucket{le=\"+Inf\",operation=\"add\",outcome=\"ok\"} 2",
            "ipam_cni_operation_duration_seconds_count{operation=\"add\",outcome=\"error\"} 1",
            "ipam_cni_operation_duration_seconds_bucket{le=\"0.0005\",operation=\"del\",outcome=\"ok\"} 1",
            "# TYPE ipam_cni_cas_conflicts counter",
            "ipam_cni_cas_conflicts_total{operation=\"add\"} 3",
            "ipam_cni_cas_conflicts_total{operation=\"del\"} 0",
            "# EOF",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
    }
}
