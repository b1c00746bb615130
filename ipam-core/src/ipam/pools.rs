//! Pools created on first use: the one policy for front ends that name a pool by CIDR
//! (calico-ipam's `ipv4_pools: ["10.0.0.0/24"]`, host-local's `ranges`) rather than by an
//! `IPPool` an operator created.
//!
//! A wanted pool is named after its CIDR ([`cidr_to_name`]) with the family's default block
//! size, never smaller than the pool. Addresses it must never hand out (host-local's network,
//! broadcast, gateway and what lies outside `rangeStart..rangeEnd`) are kept in one
//! `IPReservation` named after the pool, so the allocator's own reservation rule enforces
//! them; there is no second allocator.

use ipnet::IpNet;

use super::Ipam;
use crate::cidr::cidr_to_name;
use crate::error::{Error, Result};
use crate::model::{AssignmentMode, IpPool, IpReservation};
use crate::store::{Datastore, StoreError};

/// A pool a request needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WantedPool {
    /// An `IPPool` that must already exist, by name.
    Existing(String),
    /// A pool over `cidr`, created when no pool has exactly this CIDR.
    Cidr {
        /// The pool's network.
        cidr: IpNet,
        /// Whether a pool created here is `Manual` (served only when named).
        manual: bool,
        /// Addresses of the pool never to hand out; empty means no reservation.
        reserved: Vec<IpNet>,
    },
}

/// What [`Ipam::ensure_pools`] wrote, so that a failed request can undo it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EnsuredPools {
    /// Pools created.
    pub created_pools: Vec<String>,
    /// Reservations created.
    pub created_reservations: Vec<String>,
}

/// The block size a pool created on first use gets: the family default
/// ([`IpPool::effective_block_size`]) unless the pool is smaller than one such block.
pub fn first_use_block_size(cidr: &IpNet) -> u8 {
    cidr.prefix_len()
        .max(IpPool::new(*cidr).effective_block_size())
}

/// The name of the reservation that holds a first-use pool's reserved addresses.
pub fn reservation_name(pool_cidr: &IpNet) -> String {
    format!("{}-reserved", cidr_to_name(pool_cidr))
}

impl<D: Datastore> Ipam<D> {
    /// Makes every wanted pool exist, and its reservation match `reserved`. A missing
    /// [`WantedPool::Existing`] is refused before anything is written. A reservation that
    /// exists with other addresses is rewritten (the last configuration wins). On error,
    /// what this call created is removed again.
    pub async fn ensure_pools(&self, wanted: &[WantedPool]) -> Result<EnsuredPools> {
        let pools = self.list_pools().await?;
        for w in wanted {
            if let WantedPool::Existing(name) = w
                && !pools.iter().any(|p| &p.name == name)
            {
                return Err(Error::PoolNotFound { name: name.clone() });
            }
        }
        let mut done = EnsuredPools::default();
        for w in wanted {
            let WantedPool::Cidr {
                cidr,
                manual,
                reserved,
            } = w
            else {
                continue;
            };
            let step = async {
                if !pools.iter().any(|p| p.value.cidr == *cidr) {
                    self.create_first_use_pool(*cidr, *manual, &mut done)
                        .await?;
                }
                if !reserved.is_empty() {
                    self.ensure_reservation(cidr, reserved, &mut done).await?;
                }
                Ok::<(), Error>(())
            };
            if let Err(e) = step.await {
                self.undo_ensure(&done).await;
                return Err(e);
            }
        }
        Ok(done)
    }

    /// Removes what [`Ipam::ensure_pools`] created (best effort: a failed request
    /// must report its own error, not this one's).
    pub async fn undo_ensure(&self, done: &EnsuredPools) {
        for name in &done.created_reservations {
            let _ = self.delete_reservation(name).await;
        }
        for name in &done.created_pools {
            let _ = self.delete_pool(name, false).await;
        }
    }

    async fn create_first_use_pool(
        &self,
        cidr: IpNet,
        manual: bool,
        done: &mut EnsuredPools,
    ) -> Result<()> {
        let name = cidr_to_name(&cidr);
        let mut pool = IpPool::new(cidr);
        pool.block_size = first_use_block_size(&cidr);
        if manual {
            pool.assignment_mode = Some(AssignmentMode::Manual);
        }
        match self.create_pool(&name, pool).await {
            Ok(()) => {
                done.created_pools.push(name);
                Ok(())
            }
            // Another plugin process created it first.
            Err(Error::PoolExists { .. }) => Ok(()),
            Err(Error::PoolOverlap { other_cidr, .. }) if other_cidr == cidr => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn ensure_reservation(
        &self,
        cidr: &IpNet,
        reserved: &[IpNet],
        done: &mut EnsuredPools,
    ) -> Result<()> {
        let name = reservation_name(cidr);
        let want = IpReservation {
            reserved_cidrs: reserved.iter().map(ToString::to_string).collect(),
        };
        let (name, want) = (&name, &want);
        let created = self
            .retry("writing a pool's reservation", move || async move {
                match self.store.get::<IpReservation>(name).await {
                    Ok(s) if s.value == *want => Ok(false),
                    Ok(s) => {
                        self.store.update(name, want.clone(), &s.revision).await?;
                        Ok(false)
                    }
                    Err(StoreError::NotFound { .. }) => {
                        match self.store.create(name, want.clone()).await {
                            Ok(_) => Ok(true),
                            // Created by another process since the read: compare again.
                            Err(StoreError::AlreadyExists { .. }) => Err(StoreError::Conflict {
                                kind: crate::store::Kind::IpReservation,
                                name: name.clone(),
                            }
                            .into()),
                            Err(e) => Err(e.into()),
                        }
                    }
                    Err(e) => Err(e.into()),
                }
            })
            .await?;
        if created {
            done.created_reservations.push(name.clone());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ManualClock, MemoryStore};

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn block_size_is_the_family_default_or_the_pool() {
        assert_eq!(first_use_block_size(&net("10.0.0.0/16")), 26);
        assert_eq!(first_use_block_size(&net("10.0.0.0/29")), 29);
        assert_eq!(first_use_block_size(&net("fd00::/64")), 122);
        assert_eq!(first_use_block_size(&net("fd00::/124")), 124);
    }

    #[test]
    fn creates_once_reserves_and_refuses_missing_names() {
        pollster::block_on(async {
            let ipam = Ipam::new(
                MemoryStore::new(),
                ManualClock::new(time::OffsetDateTime::UNIX_EPOCH),
            );
            let want = WantedPool::Cidr {
                cidr: net("10.9.0.0/24"),
                manual: true,
                reserved: vec![net("10.9.0.0/32"), net("10.9.0.1/32")],
            };
            let done = ipam
                .ensure_pools(std::slice::from_ref(&want))
                .await
                .unwrap();
            assert_eq!(done.created_pools, vec!["10-9-0-0-24".to_string()]);
            assert_eq!(done.created_reservations.len(), 1);
            let pool = ipam.get_pool("10-9-0-0-24").await.unwrap().value;
            assert!(pool.is_manual());
            assert_eq!(pool.block_size, 26);
            assert!(
                ipam.reserved_by("10.9.0.1".parse().unwrap())
                    .await
                    .unwrap()
                    .is_some()
            );
            assert!(
                ipam.reserved_by("10.9.0.2".parse().unwrap())
                    .await
                    .unwrap()
                    .is_none()
            );
            // A second request creates nothing.
            let again = ipam.ensure_pools(&[want]).await.unwrap();
            assert_eq!(again, EnsuredPools::default());
            // A missing name is refused with nothing written.
            let missing = WantedPool::Existing("nope".into());
            let other = WantedPool::Cidr {
                cidr: net("10.8.0.0/24"),
                manual: false,
                reserved: vec![],
            };
            let err = ipam.ensure_pools(&[other, missing]).await.unwrap_err();
            assert!(matches!(err, Error::PoolNotFound { .. }), "{err}");
            assert_eq!(ipam.list_pools().await.unwrap().len(), 1);
        });
    }
}
