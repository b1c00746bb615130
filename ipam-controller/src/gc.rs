//! One garbage-collection pass: judge with `ipam_core::check`, wait out the grace period
//! with `ipam_core::check::Observations`, confirm with the API server, release with the
//! allocator.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Duration;

use ipam_core::check::{
    Finding, FindingKind, Live, NO_AFFINITY, Observations, PoolNode, Snapshot, TunnelLeak, check,
    dead_node_tunnels, pool_of,
};
use ipam_core::{
    BlockAffinity, BlockCidr, Datastore, Error as IpamError, Ipam, NodeName, ReleaseOutcome,
    ReleaseRequest, Stored,
};
use ipam_metrics::{GcMetrics, GcReason};
use time::OffsetDateTime;

use crate::Result;
use crate::cluster::{Cluster, LiveView};

/// What the collector has seen and is waiting on, between passes.
pub struct Collector {
    grace: time::Duration,
    leaks: Observations,
    dead_node_tunnels: Observations,
    dead_node_affinities: Observations,
}

/// What one pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PassReport {
    /// Addresses released because their pod is gone, or because they were the tunnel
    /// address of a node that is gone.
    pub released: Vec<IpAddr>,
    /// Affinities (with their empty blocks) released because their node is gone, by name.
    pub affinities_released: Vec<String>,
    /// Possible leaks waiting out the grace period, by pool and node.
    pub candidates: BTreeMap<PoolNode, u64>,
    /// Objects being waited on.
    pub watching: usize,
    /// Steps that failed (the pass goes on past them; each is logged).
    pub errors: usize,
}

/// One possible leak: a finding of `check`, with its labels.
struct Leak {
    ip: IpAddr,
    handle: Option<String>,
    sequence: Option<u64>,
    namespace: String,
    pod: String,
    at: PoolNode,
}

impl Collector {
    /// A collector that acts on what stayed abandoned and unchanged for `grace`.
    pub fn new(grace: Duration) -> Self {
        Collector {
            grace: time::Duration::try_from(grace).unwrap_or(time::Duration::MAX),
            leaks: Observations::default(),
            dead_node_tunnels: Observations::default(),
            dead_node_affinities: Observations::default(),
        }
    }

    /// One pass at `now` over `snapshot`, against what `cluster` holds; `leading` is asked
    /// before every release, so a controller that lost its lease stops mid-pass.
    pub async fn pass<D: Datastore>(
        &mut self,
        ipam: &Ipam<D>,
        snapshot: &Snapshot,
        cluster: &Cluster,
        now: OffsetDateTime,
        leading: &(dyn Fn() -> bool + Sync),
        metrics: Option<&GcMetrics>,
    ) -> PassReport {
        let live = cluster.live();
        let mut report = PassReport::default();
        let due = self.due_leaks(snapshot, &live, now, &mut report);
        for leak in due {
            if !leading() {
                break;
            }
            release_leak(ipam, cluster, &leak, metrics, &mut report).await;
        }
        let due = self.due_tunnels(snapshot, &live, now);
        for t in due {
            if !leading() {
                break;
            }
            release_tunnel(ipam, cluster, &t, snapshot, metrics, &mut report).await;
        }
        let due = self.due_affinities(snapshot, &live, now);
        for a in due {
            if !leading() {
                break;
            }
            release_affinity(ipam, cluster, a, metrics, &mut report).await;
        }
        report.watching =
            self.leaks.len() + self.dead_node_tunnels.len() + self.dead_node_affinities.len();
        report
    }

    /// Leaks seen unchanged for the grace period; counts every candidate on the way.
    fn due_leaks(
        &mut self,
        snapshot: &Snapshot,
        live: &LiveView,
        now: OffsetDateTime,
        report: &mut PassReport,
    ) -> Vec<Leak> {
        let found = check(
            snapshot,
            &Live {
                owners: Some(&live.owners),
                nodes: None,
            },
            now,
        );
        let leaks: Vec<Leak> = found
            .of_kind(FindingKind::LeakedAllocation)
            .filter_map(|f| leak(f, snapshot))
            .collect();
        let keys: BTreeSet<String> = leaks.iter().map(|l| l.ip.to_string()).collect();
        self.leaks.retain(&keys);
        let mut due = Vec::new();
        for l in leaks {
            *report.candidates.entry(l.at.clone()).or_default() += 1;
            // The same allocation: a reallocated address has another sequence number. An
            // observation is kept until the leak is gone, so one that could not be
            // released yet (see `whole_handles`) is tried again on the next pass.
            let mark = format!("{:?} {:?}", l.handle, l.sequence);
            if self.leaks.due(&l.ip.to_string(), &mark, now, self.grace) {
                due.push(l);
            }
        }
        whole_handles(due, snapshot)
    }

    /// Tunnel addresses of nodes that are gone, which nothing else on the node holds back,
    /// seen so and unchanged (handle, sequence number) for the grace period.
    fn due_tunnels(
        &mut self,
        snapshot: &Snapshot,
        live: &LiveView,
        now: OffsetDateTime,
    ) -> Vec<TunnelLeak> {
        let found = dead_node_tunnels(snapshot, &live.owners, &live.nodes);
        let keys: BTreeSet<String> = found.iter().map(|t| t.ip.to_string()).collect();
        self.dead_node_tunnels.retain(&keys);
        found
            .into_iter()
            .filter(|t| {
                let mark = format!("{:?} {:?}", t.handle, t.sequence);
                self.dead_node_tunnels
                    .due(&t.ip.to_string(), &mark, now, self.grace)
            })
            .collect()
    }

    /// Affinities of nodes that are gone, whose block is empty or missing, seen so and
    /// unchanged (affinity revision, block sequence number) for the grace period.
    fn due_affinities<'s>(
        &mut self,
        snapshot: &'s Snapshot,
        live: &LiveView,
        now: OffsetDateTime,
    ) -> Vec<&'s Stored<BlockAffinity>> {
        let mut marks = BTreeMap::new();
        for a in &snapshot.affinities {
            if live.nodes.contains(&a.value.node) {
                continue;
            }
            let block = snapshot
                .blocks
                .iter()
                .find(|b| b.value.cidr == a.value.cidr);
            match block {
                Some(b) if b.value.host() == Some(&a.value.node) && !b.value.is_empty() => {}
                _ => {
                    let seq = block.map(|b| b.value.sequence_number);
                    marks.insert(a.name.clone(), (a, format!("{} {seq:?}", a.revision.0)));
                }
            }
        }
        self.dead_node_affinities
            .retain(&marks.keys().cloned().collect());
        let mut due = Vec::new();
        for (name, (a, mark)) in marks {
            if self.dead_node_affinities.due(&name, &mark, now, self.grace) {
                due.push(a);
            }
        }
        due
    }
}

/// The due leaks of handles all of whose addresses are due, as Calico's kube-controllers
/// decides: while any address of a handle is still valid (or still waiting), the handle
/// is left whole.
fn whole_handles(due: Vec<Leak>, snapshot: &Snapshot) -> Vec<Leak> {
    let mut held: BTreeMap<&str, usize> = BTreeMap::new();
    for b in &snapshot.blocks {
        for o in 0..b.value.allocations.len() as u32 {
            let attr = b.value.attribute_of(o).filter(|a| a.released_at.is_none());
            if let Some(h) = attr.and_then(|a| a.handle_id.as_deref()) {
                *held.entry(h).or_default() += 1;
            }
        }
    }
    let mut due_by_handle: BTreeMap<String, usize> = BTreeMap::new();
    for h in due.iter().filter_map(|l| l.handle.clone()) {
        *due_by_handle.entry(h).or_default() += 1;
    }
    due.into_iter()
        .filter(|l| match &l.handle {
            Some(h) => due_by_handle.get(h) == held.get(h.as_str()),
            None => true,
        })
        .collect()
}

/// A leak finding that names a pod (the only kind judged against the cluster's pods).
fn leak(f: &Finding, snapshot: &Snapshot) -> Option<Leak> {
    let Finding::LeakedAllocation {
        ip,
        block,
        handle,
        sequence,
        namespace,
        pod,
        node,
    } = f
    else {
        return None;
    };
    Some(Leak {
        ip: *ip,
        handle: handle.clone(),
        sequence: *sequence,
        namespace: namespace.clone()?,
        pod: pod.clone()?,
        at: PoolNode {
            pool: pool_of(&snapshot.pools, block).to_owned(),
            node: node.clone().unwrap_or_else(|| NO_AFFINITY.to_owned()),
        },
    })
}

/// Releases one leak if its pod is still gone.
async fn release_leak<D: Datastore>(
    ipam: &Ipam<D>,
    cluster: &Cluster,
    l: &Leak,
    metrics: Option<&GcMetrics>,
    report: &mut PassReport,
) {
    let request = ReleaseRequest {
        ip: l.ip,
        sequence: l.sequence,
        handle: l.handle.clone(),
    };
    let owner = Owner {
        what: format!("pod {}/{}", l.namespace, l.pod),
        at: l.at.clone(),
        reason: GcReason::PodDeleted,
    };
    let exists = cluster.pod_exists(&l.namespace, &l.pod);
    release_address(ipam, exists, request, owner, metrics, report).await;
}

/// Releases a deleted node's tunnel address if the node is still gone.
async fn release_tunnel<D: Datastore>(
    ipam: &Ipam<D>,
    cluster: &Cluster,
    t: &TunnelLeak,
    snapshot: &Snapshot,
    metrics: Option<&GcMetrics>,
    report: &mut PassReport,
) {
    let request = ReleaseRequest {
        ip: t.ip,
        sequence: t.sequence,
        handle: t.handle.clone(),
    };
    let owner = Owner {
        what: format!("node {} (its tunnel address)", t.node),
        at: PoolNode {
            pool: pool_of(&snapshot.pools, &t.block).to_owned(),
            node: t.node.clone(),
        },
        reason: GcReason::NodeDeleted,
    };
    let exists = cluster.node_exists(&t.node);
    release_address(ipam, exists, request, owner, metrics, report).await;
}

/// Whose an address was, for the log and the metrics.
struct Owner {
    what: String,
    at: PoolNode,
    reason: GcReason,
}

/// Releases `request` unless its owner, read once more from the API server, exists after
/// all. The release is guarded by the handle and sequence number, so an address that
/// changed hands since it was read is left alone.
async fn release_address<D: Datastore>(
    ipam: &Ipam<D>,
    owner_exists: impl std::future::Future<Output = Result<bool>>,
    request: ReleaseRequest,
    owner: Owner,
    metrics: Option<&GcMetrics>,
    report: &mut PassReport,
) {
    let ip = request.ip;
    let released: Result<bool> = async {
        if owner_exists.await? {
            return Ok(false);
        }
        let done = ipam.release_ips(&[request]).await?;
        Ok(matches!(
            done.into_iter().next().map(|(_, o)| o),
            Some(ReleaseOutcome::Released | ReleaseOutcome::CoolingDown)
        ))
    }
    .await;
    match released {
        Ok(true) => {
            tracing::info!(%ip, owner = %owner.what, "released an address whose owner is gone");
            report.released.push(ip);
            if let Some(m) = metrics {
                m.reclaimed(&owner.at, owner.reason);
            }
        }
        Ok(false) => {}
        Err(e) => {
            tracing::warn!(%ip, owner = %owner.what, "releasing an address failed: {e}");
            report.errors += 1;
        }
    }
}

/// Releases one affinity of a node that is gone, and its block if empty.
async fn release_affinity<D: Datastore>(
    ipam: &Ipam<D>,
    cluster: &Cluster,
    a: &Stored<BlockAffinity>,
    metrics: Option<&GcMetrics>,
    report: &mut PassReport,
) {
    let node = &a.value.node;
    let released: Result<bool> = async {
        if cluster.node_exists(node).await? {
            return Ok(false);
        }
        let cidr = BlockCidr::new(a.value.cidr)?;
        match ipam
            .release_affinity(cidr, &NodeName::new(node.as_str())?, true)
            .await
        {
            Ok(()) => Ok(true),
            // An address landed in it since it was read: it stays.
            Err(IpamError::BlockNotEmpty { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
    .await;
    match released {
        Ok(true) => {
            tracing::info!(affinity = %a.name, %node, "released the affinity of a deleted node");
            report.affinities_released.push(a.name.clone());
            if let Some(m) = metrics {
                m.released(GcReason::NodeDeleted);
            }
        }
        Ok(false) => {}
        Err(e) => {
            tracing::warn!(affinity = %a.name, "releasing a deleted node's affinity failed: {e}");
            report.errors += 1;
        }
    }
}
