//! `Ipam<D>`: the allocator client over any [`Datastore`].
//!
//! Every write is a compare-and-swap inside [`Ipam::retry`], the one loop in the library
//! that handles conflicts. Decisions are made on values read in the same attempt; a value
//! is changed only to become the body of the next write.

pub(crate) mod admin;
mod affinity;
mod assign;
mod free_blocks;
mod handle;
pub mod pools;
mod release;
mod usage;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use ipnet::IpNet;

pub use self::affinity::ReleasedAffinities;
pub use self::assign::{Assigned, AutoAssignArgs, LabelsFromStore};
pub use self::pools::{EnsuredPools, WantedPool};
pub use self::release::{Allocation, ReleaseRequest};
pub use self::usage::{BlockUsage, PoolUsage, Usage};

use crate::cidr::parse_cidr_or_ip;
use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::model::{IpPool, IpReservation, IpamConfig};
use crate::retry::{MAX_ATTEMPTS, RetryError, retry_counting_conflicts};
use crate::store::{Datastore, StoreError, Stored};

/// The allocator: Calico's IPAM operations over a datastore.
pub struct Ipam<D> {
    store: D,
    clock: Arc<dyn Clock>,
    /// Blocks this process has seen taken, so that claims skip them without a read.
    free_blocks: free_blocks::FreeBlockHints,
    /// Attempts that lost a compare-and-swap race, for the operator's metrics.
    conflicts: AtomicU64,
}

/// Address family, for messages and pool filtering.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

/// Reservations parsed once per operation.
#[derive(Clone, Debug, Default)]
pub(crate) struct Reservations(Vec<(IpNet, String)>);

impl<D: Datastore> Ipam<D> {
    /// An allocator on `store` reading time from `clock`: the front end passes
    /// [`SystemClock`](crate::SystemClock), tests a [`ManualClock`](crate::ManualClock).
    pub fn new(store: D, clock: impl Clock + 'static) -> Self {
        Ipam {
            store,
            clock: Arc::new(clock),
            free_blocks: free_blocks::FreeBlockHints::default(),
            conflicts: AtomicU64::new(0),
        }
    }

    /// How many attempts of this allocator's operations lost a compare-and-swap race
    /// (each was retried, or ended the operation at [`MAX_ATTEMPTS`]). A count that grows
    /// with the load means writers queue on the same blocks. A delete that finds its object
    /// already replaced is not a retry (someone else's write stands) and is not counted.
    pub fn conflicts(&self) -> u64 {
        self.conflicts.load(Ordering::Relaxed)
    }

    /// The datastore.
    pub fn store(&self) -> &D {
        &self.store
    }

    /// Runs `attempt` until it returns anything but a CAS conflict, at most
    /// [`MAX_ATTEMPTS`] times. Conflicts never escape: exhaustion is its own error.
    ///
    /// Attempts are closures returning futures (not async closures) so that every
    /// operation's future is `Send` and can be spawned on a multi-threaded runtime.
    pub(crate) async fn retry<T, Fut>(
        &self,
        operation: &'static str,
        mut attempt: impl FnMut() -> Fut,
    ) -> Result<T>
    where
        Fut: Future<Output = Result<T>>,
    {
        self.retry_with(operation, (), move |()| {
            let fut = attempt();
            async move { ((), fut.await) }
        })
        .await
    }

    /// [`Ipam::retry`] for attempts that carry state from one try to the next: each attempt
    /// takes `state` and hands it back with its result. The loop is
    /// [`retry_conflicts`](crate::retry::retry_conflicts); an attempt must not retry
    /// conflicts itself (it calls the `_once` forms of other operations).
    pub(crate) async fn retry_with<S, T, Fut>(
        &self,
        operation: &'static str,
        state: S,
        attempt: impl FnMut(S) -> Fut,
    ) -> Result<T>
    where
        Fut: Future<Output = (S, Result<T>)>,
    {
        let counted = || {
            self.conflicts.fetch_add(1, Ordering::Relaxed);
        };
        retry_counting_conflicts(MAX_ATTEMPTS, state, attempt, counted)
            .await
            .map_err(|e| match e {
                RetryError::Failed(e) => e,
                RetryError::Exhausted { attempts, .. } => Error::RetriesExhausted {
                    operation,
                    attempts,
                },
            })
    }

    /// The stored config, or the defaults when none is stored.
    pub async fn get_config(&self) -> Result<IpamConfig> {
        Ok(self
            .config_stored()
            .await?
            .map(|s| s.value)
            .unwrap_or_default())
    }

    async fn config_stored(&self) -> Result<Option<Stored<IpamConfig>>> {
        match self.store.get::<IpamConfig>(IpamConfig::NAME).await {
            Ok(s) => Ok(Some(s)),
            Err(StoreError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn reservations(&self) -> Result<Reservations> {
        Ok(Reservations::parse(
            &self
                .store
                .list::<IpReservation>(crate::store::Scope::All)
                .await?,
        ))
    }

    /// The enabled pool containing `ip`, if any.
    async fn pool_for(&self, ip: IpAddr) -> Result<Option<Stored<IpPool>>> {
        let pools = self.store.list::<IpPool>(crate::store::Scope::All).await?;
        Ok(pools
            .into_iter()
            .find(|p| !p.value.disabled && p.value.cidr.contains(&ip)))
    }

    fn now(&self) -> time::OffsetDateTime {
        self.clock.now()
    }
}

impl Family {
    /// The family of a network.
    pub fn of(net: &IpNet) -> Family {
        match net {
            IpNet::V4(_) => Family::V4,
            IpNet::V6(_) => Family::V6,
        }
    }

    /// `IPv4` or `IPv6`.
    pub fn name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }
}

impl Reservations {
    pub(crate) fn parse(list: &[Stored<IpReservation>]) -> Self {
        // Stored reservations were validated on write; an unparsable entry written by another
        // tool is skipped here rather than failing every allocation.
        let nets = list
            .iter()
            .flat_map(|r| {
                r.value
                    .reserved_cidrs
                    .iter()
                    .filter_map(|c| parse_cidr_or_ip(c).ok().map(|n| (n, r.name.clone())))
            })
            .collect();
        Reservations(nets)
    }

    /// The reservation covering `ip`, if any.
    pub(crate) fn covering(&self, ip: IpAddr) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n.contains(&ip))
            .map(|(_, name)| name.as_str())
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether every address of `net` is reserved, by one reservation or by several
    /// that together cover it.
    pub(crate) fn covers_all(&self, net: &IpNet) -> bool {
        let (lo, hi) = crate::ipam::usage::bounds(net);
        self.count_in(net) == hi - lo + 1
    }

    /// How many addresses of `net` are reserved (overlapping reservations counted once).
    pub(crate) fn count_in(&self, net: &IpNet) -> u128 {
        let (lo, hi) = crate::ipam::usage::bounds(net);
        let mut ranges: Vec<(u128, u128)> = self
            .0
            .iter()
            .filter(|(n, _)| Family::of(n) == Family::of(net))
            .map(|(n, _)| crate::ipam::usage::bounds(n))
            .map(|(a, b)| (a.max(lo), b.min(hi)))
            .filter(|(a, b)| a <= b)
            .collect();
        ranges.sort();
        let mut total = 0u128;
        let mut cur: Option<(u128, u128)> = None;
        for (a, b) in ranges {
            cur = match cur {
                Some((ca, cb)) if a <= cb.saturating_add(1) => Some((ca, cb.max(b))),
                Some((ca, cb)) => {
                    total += cb - ca + 1;
                    Some((a, b))
                }
                None => Some((a, b)),
            };
        }
        total + cur.map_or(0, |(a, b)| b - a + 1)
    }
}

/// Labels of a node, for pool selectors.
pub type Labels = BTreeMap<String, String>;
