//! The running controller: a lease task that keeps (or seeks) the leader lease, and a pass
//! task that, while the lease is held, reads the datastore once per interval, updates the
//! metrics and collects garbage.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipam_core::check::{Snapshot, tally};
use ipam_core::{Datastore, Ipam, SystemClock};
use ipam_metrics::Metrics;
use kube::Client;
use time::OffsetDateTime;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::cluster::Cluster;
use crate::gc::{Collector, PassReport};
use crate::lease::{Elector, LeaseSettings};
use crate::{Result, Settings};

/// How long the first list of Pods and Nodes may take before the start fails.
const SYNC_WITHIN: Duration = Duration::from_secs(60);

/// What the controller has done so far, for tests and logs.
#[derive(Clone, Debug, Default)]
pub struct Status {
    /// Passes run as leader.
    pub passes: u64,
    /// Whether this replica led at its last lease tick.
    pub leading: bool,
    /// Every address released, in order.
    pub released: Vec<IpAddr>,
    /// Every affinity released, by name.
    pub affinities_released: Vec<String>,
    /// The last pass's report.
    pub last: PassReport,
}

/// A started controller; dropping it stops its tasks without giving up the lease.
pub struct Controller {
    lease_task: JoinHandle<()>,
    pass_task: JoinHandle<()>,
    stop: watch::Sender<bool>,
    status: watch::Receiver<Status>,
}

impl Controller {
    /// Starts watching the cluster through `client` and, once Pods and Nodes are listed,
    /// seeking the lease and running passes over `store`.
    pub async fn start<D: Datastore + 'static>(
        store: D,
        client: Client,
        settings: Settings,
        metrics: Arc<Metrics>,
    ) -> Result<Self> {
        let cluster = Cluster::watch(client.clone());
        cluster.synced(SYNC_WITHIN).await?;
        let (renewed_tx, renewed_rx) = watch::channel(None);
        let (stop, stop_rx) = watch::channel(false);
        let (status_tx, status) = watch::channel(Status::default());
        let elector = Elector::new(client, settings.lease.clone());
        let lease_task = tokio::spawn(keep_lease(
            elector,
            renewed_tx,
            stop_rx,
            Arc::clone(&metrics),
        ));
        let passes = Passes {
            ipam: Ipam::new(store, SystemClock),
            cluster,
            collector: Collector::new(settings.grace),
            renewed: renewed_rx,
            lease: settings.lease.clone(),
            metrics,
            status: status_tx,
        };
        let pass_task = tokio::spawn(passes.run(settings.interval));
        Ok(Controller {
            lease_task,
            pass_task,
            stop,
            status,
        })
    }

    /// What the controller has done so far (a receiver to wait on changes).
    pub fn status(&self) -> watch::Receiver<Status> {
        self.status.clone()
    }

    /// Stops, giving the lease up so that another replica takes over at once.
    pub async fn stop(mut self) {
        self.pass_task.abort();
        let _ = self.stop.send(true);
        // The lease task releases and ends; a hung API server must not hang the stop.
        if tokio::time::timeout(Duration::from_secs(10), &mut self.lease_task)
            .await
            .is_err()
        {
            tracing::warn!("the lease was not given up within 10 s");
        }
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.pass_task.abort();
        self.lease_task.abort();
    }
}

/// Renews or seeks the lease every retry period until told to stop, then gives it up.
async fn keep_lease(
    mut elector: Elector,
    renewed: watch::Sender<Option<Instant>>,
    mut stop: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
) {
    let period = elector_period(&elector);
    loop {
        let leading = match elector.tick().await {
            Ok(leading) => leading,
            Err(e) => {
                tracing::warn!("leader lease: {e}");
                false
            }
        };
        let _ = renewed.send(elector.renewed());
        if let Some(gc) = metrics.gc() {
            gc.set_leader(leading);
        }
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = stop.changed() => break,
        }
    }
    let _ = renewed.send(None);
    if let Err(e) = elector.release().await {
        tracing::warn!("giving up the leader lease: {e}");
    }
}

fn elector_period(elector: &Elector) -> Duration {
    elector
        .settings()
        .retry_period()
        .max(Duration::from_millis(100))
}

/// The pass task's state.
struct Passes<D> {
    ipam: Ipam<D>,
    cluster: Cluster,
    collector: Collector,
    renewed: watch::Receiver<Option<Instant>>,
    lease: LeaseSettings,
    metrics: Arc<Metrics>,
    status: watch::Sender<Status>,
}

impl<D: Datastore> Passes<D> {
    async fn run(mut self, interval: Duration) {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let leading = self.leading();
            self.status.send_modify(|s| s.leading = leading);
            if !leading {
                continue;
            }
            match self.pass().await {
                Ok(report) => self.record(report),
                Err(e) => tracing::warn!("pass failed: {e}"),
            }
        }
    }

    fn leading(&self) -> bool {
        Elector::still_leading(*self.renewed.borrow(), &self.lease)
    }

    async fn pass(&mut self) -> Result<PassReport> {
        let snapshot = Snapshot::read(self.ipam.store()).await?;
        self.metrics.observe(&tally(&snapshot));
        let renewed = self.renewed.clone();
        let lease = self.lease.clone();
        let leading = move || Elector::still_leading(*renewed.borrow(), &lease);
        let report = self
            .collector
            .pass(
                &self.ipam,
                &snapshot,
                &self.cluster,
                OffsetDateTime::now_utc(),
                &leading,
                self.metrics.gc(),
            )
            .await;
        if let Some(gc) = self.metrics.gc() {
            gc.set_candidates(&report.candidates);
        }
        Ok(report)
    }

    fn record(&self, report: PassReport) {
        self.status.send_modify(|s| {
            s.passes += 1;
            s.released.extend(report.released.iter().copied());
            s.affinities_released
                .extend(report.affinities_released.iter().cloned());
            s.last = report;
        });
    }
}
