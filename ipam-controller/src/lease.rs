//! Leader election on a `coordination.k8s.io/v1` Lease, as client-go's leader election
//! does it: every write is a compare-and-swap on the Lease's `resourceVersion` (a replace
//! that the server refuses with 409 when someone wrote in between), and a candidate takes
//! over only a lease whose record it has seen unchanged for a whole lease duration, timed
//! by its own monotonic clock (so the replicas' clocks need not agree).
//!
//! The leader acts only while its last successful renewal, timed from before the request
//! was sent, is younger than the renew deadline (two thirds of the lease duration); a
//! candidate waits the full duration after the last change it saw. So the old leader has
//! stopped acting before anyone else may start.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use kube::{Client, Error as KubeError};

use crate::Result;

/// Which Lease, who we are, and for how long a lease holds.
#[derive(Clone, Debug)]
pub struct LeaseSettings {
    /// The Lease's namespace.
    pub namespace: String,
    /// The Lease's name.
    pub name: String,
    /// This replica's identity (`holderIdentity`): unique among the replicas.
    pub identity: String,
    /// How long a lease holds without renewal.
    pub duration: Duration,
}

/// One replica's side of the election.
pub struct Elector {
    api: Api<Lease>,
    settings: LeaseSettings,
    /// When the last successful acquire or renewal was sent.
    renewed: Option<Instant>,
    /// Another holder's record (`resourceVersion`) and when it was first seen.
    observed: Option<(String, Instant)>,
}

impl LeaseSettings {
    /// How often to renew or try to acquire: a third of the duration.
    pub fn retry_period(&self) -> Duration {
        self.duration / 3
    }

    fn renew_deadline(&self) -> Duration {
        self.duration * 2 / 3
    }
}

impl Elector {
    /// An elector for `settings` through `client`.
    pub fn new(client: Client, settings: LeaseSettings) -> Self {
        Elector {
            api: Api::namespaced(client, &settings.namespace),
            settings,
            renewed: None,
            observed: None,
        }
    }

    /// The settings it was made with.
    pub fn settings(&self) -> &LeaseSettings {
        &self.settings
    }

    /// The instant of the last successful renewal, if this replica leads.
    pub fn renewed(&self) -> Option<Instant> {
        self.renewed
            .filter(|t| t.elapsed() < self.settings.renew_deadline())
    }

    /// Whether a renewal at `renewed` still lets this replica act.
    pub fn still_leading(renewed: Option<Instant>, settings: &LeaseSettings) -> bool {
        renewed.is_some_and(|t| t.elapsed() < settings.renew_deadline())
    }

    /// Acquires or renews the lease; whether this replica leads now.
    pub async fn tick(&mut self) -> Result<bool> {
        let sent = Instant::now();
        let won = match self.api.get_opt(&self.settings.name).await? {
            None => self.create().await?,
            Some(lease) => self.renew_or_take(lease).await?,
        };
        if won {
            self.renewed = Some(sent);
        } else {
            self.renewed = None;
        }
        Ok(self.renewed().is_some())
    }

    /// Gives the lease up if held, so another replica need not wait it out.
    pub async fn release(&mut self) -> Result<()> {
        self.renewed = None;
        let Some(mut lease) = self.api.get_opt(&self.settings.name).await? else {
            return Ok(());
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() != Some(&self.settings.identity) {
            return Ok(());
        }
        spec.holder_identity = None;
        cas(self.replace(&lease).await).map(|_| ())
    }

    async fn create(&self) -> Result<bool> {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(self.settings.name.clone()),
                namespace: Some(self.settings.namespace.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(self.held_spec(0)),
        };
        match self.api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(KubeError::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    async fn renew_or_take(&mut self, mut lease: Lease) -> Result<bool> {
        let spec = lease.spec.clone().unwrap_or_default();
        let mine = spec.holder_identity.as_deref() == Some(&self.settings.identity);
        let transitions = spec.lease_transitions.unwrap_or(0);
        if mine {
            let mut renewed = self.held_spec(transitions);
            renewed.acquire_time = spec.acquire_time;
            lease.spec = Some(renewed);
            return cas(self.replace(&lease).await);
        }
        if !self.expired(&lease, &spec) {
            return Ok(false);
        }
        lease.spec = Some(self.held_spec(transitions.saturating_add(1)));
        let won = cas(self.replace(&lease).await)?;
        if won {
            tracing::info!(identity = %self.settings.identity, "took over the leader lease");
        }
        Ok(won)
    }

    /// Whether another holder's lease may be taken: nobody holds it, or its record has not
    /// changed for a whole lease duration on our clock.
    fn expired(&mut self, lease: &Lease, spec: &LeaseSpec) -> bool {
        if spec.holder_identity.as_deref().is_none_or(str::is_empty) {
            return true;
        }
        let version = lease.metadata.resource_version.clone().unwrap_or_default();
        let since = match &self.observed {
            Some((v, at)) if *v == version => *at,
            _ => {
                self.observed = Some((version, Instant::now()));
                return false;
            }
        };
        let held_for = spec
            .lease_duration_seconds
            .and_then(|s| u64::try_from(s).ok())
            .map_or(self.settings.duration, Duration::from_secs);
        since.elapsed() >= held_for.max(self.settings.duration)
    }

    fn held_spec(&self, transitions: i32) -> LeaseSpec {
        let now = MicroTime(k8s_openapi::chrono::Utc::now());
        let seconds = i32::try_from(self.settings.duration.as_secs().max(1)).unwrap_or(i32::MAX);
        LeaseSpec {
            holder_identity: Some(self.settings.identity.clone()),
            lease_duration_seconds: Some(seconds),
            acquire_time: Some(now.clone()),
            renew_time: Some(now),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    /// A replace carrying the `resourceVersion` read: the server's compare-and-swap.
    async fn replace(&self, lease: &Lease) -> std::result::Result<Lease, KubeError> {
        self.api
            .replace(&self.settings.name, &PostParams::default(), lease)
            .await
    }
}

/// A write that lost the race (409) means someone else wrote first: not ours this time.
fn cas(written: std::result::Result<Lease, KubeError>) -> Result<bool> {
    match written {
        Ok(_) => Ok(true),
        Err(KubeError::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => Err(e.into()),
    }
}
