//! Administration: IPAMConfig, pools and reservations, each validated before it is written.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::cidr::{BlockCidr, check_block_size, overlaps, parse_cidr_or_ip};
use crate::error::{Error, Result};
use crate::model::{IpPool, IpReservation, IpamBlock, IpamConfig};
use crate::selector::Selector;
use crate::store::{Datastore, Scope, StoreError, Stored};

use super::{Ipam, ReleaseRequest};

impl<D: Datastore> Ipam<D> {
    /// Validates and stores the IPAM config.
    ///
    /// ```
    /// # pollster::block_on(async {
    /// use ipam_core::{Ipam, MemoryStore, IpamConfig, Error};
    /// let ipam = Ipam::new(MemoryStore::new(), ipam_core::SystemClock);
    /// let strict = IpamConfig { strict_affinity: true, max_blocks_per_host: 4, ..Default::default() };
    /// ipam.set_config(strict).await.unwrap();
    /// let bad = IpamConfig { strict_affinity: false, auto_allocate_blocks: false, ..Default::default() };
    /// assert!(matches!(ipam.set_config(bad).await, Err(Error::InvalidConfig { .. })));
    /// assert_eq!(ipam.get_config().await.unwrap().max_blocks_per_host, 4);
    /// # });
    /// ```
    pub async fn set_config(&self, config: IpamConfig) -> Result<()> {
        validate_config(&config)?;
        let config = &config;
        self.retry("writing the IPAM config", move || async move {
            match self.config_stored().await? {
                Some(s) => {
                    self.store
                        .update(IpamConfig::NAME, config.clone(), &s.revision)
                        .await?
                }
                None => match self.store.create(IpamConfig::NAME, config.clone()).await {
                    Err(StoreError::AlreadyExists { kind, name }) => {
                        return Err(StoreError::Conflict { kind, name }.into());
                    }
                    other => other?,
                },
            };
            Ok(())
        })
        .await
    }

    /// Creates a pool after checking its CIDR, block size, selector and overlaps; a special
    /// range (see [`special_range`]) is refused.
    pub async fn create_pool(&self, name: &str, pool: IpPool) -> Result<()> {
        self.create_pool_with(name, pool, PoolCreate::default())
            .await
    }

    /// [`Ipam::create_pool`] with options (such as allowing a special range).
    pub async fn create_pool_with(&self, name: &str, pool: IpPool, opts: PoolCreate) -> Result<()> {
        validate_pool(name, &pool)?;
        if let (false, Some(reason)) = (opts.allow_special_ranges, special_range(&pool.cidr)) {
            return Err(Error::SpecialRange {
                cidr: pool.cidr,
                reason,
            });
        }
        for other in self.store.list::<IpPool>(Scope::All).await? {
            if overlaps(&other.value.cidr, &pool.cidr) {
                return Err(Error::PoolOverlap {
                    cidr: pool.cidr,
                    other: other.name,
                    other_cidr: other.value.cidr,
                });
            }
        }
        match self.store.create(name, pool).await {
            Err(StoreError::AlreadyExists { .. }) => Err(Error::PoolExists {
                name: name.to_owned(),
            }),
            other => other.map(|_| ()).map_err(Into::into),
        }
    }

    /// Changes a pool's mutable fields (everything but CIDR and block size).
    pub async fn update_pool(&self, name: &str, pool: IpPool) -> Result<()> {
        validate_pool(name, &pool)?;
        let pool = &pool;
        self.retry("updating a pool", move || async move {
            let old = self.get_pool(name).await?;
            if old.value.cidr != pool.cidr {
                return Err(Error::PoolImmutable {
                    name: name.to_owned(),
                    reason: "the CIDR cannot change",
                });
            }
            if old.value.effective_block_size() != pool.effective_block_size() {
                return Err(Error::PoolImmutable {
                    name: name.to_owned(),
                    reason: "the block size cannot change",
                });
            }
            self.store
                .update(&old.name, pool.clone(), &old.revision)
                .await?;
            Ok(())
        })
        .await
    }

    /// A pool by name or by CIDR.
    pub async fn get_pool(&self, name_or_cidr: &str) -> Result<Stored<IpPool>> {
        match self.store.get::<IpPool>(name_or_cidr).await {
            Ok(p) => return Ok(p),
            Err(StoreError::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        let cidr = name_or_cidr.parse::<IpNet>().ok();
        let pools = self.store.list::<IpPool>(Scope::All).await?;
        pools
            .into_iter()
            .find(|p| Some(p.value.cidr) == cidr)
            .ok_or_else(|| Error::PoolNotFound {
                name: name_or_cidr.to_owned(),
            })
    }

    /// Every pool, by name.
    pub async fn list_pools(&self) -> Result<Vec<Stored<IpPool>>> {
        Ok(self.store.list(Scope::All).await?)
    }

    /// Deletes a pool. With allocations left it is refused, unless `release` is set: then its
    /// addresses are released and its blocks and affinities removed first.
    pub async fn delete_pool(&self, name: &str, release: bool) -> Result<()> {
        let pool = self.get_pool(name).await?;
        let blocks = self.blocks_in(&pool.value.cidr).await?;
        let in_use: u64 = blocks.iter().map(|b| b.value.in_use() as u64).sum();
        if in_use > 0 && !release {
            return Err(Error::PoolInUse {
                name: pool.name,
                in_use,
            });
        }
        for b in &blocks {
            let cidr = b.value.block_cidr()?;
            let requests: Vec<_> = (0..cidr.size())
                .filter(|&o| b.value.attribute_of(o).is_some())
                .map(|o| ReleaseRequest::new(cidr.addr(o)))
                .collect();
            self.release_ips(&requests).await?;
            // Cooling-down addresses are gone with the pool: free them now.
            self.release_cooled_down_all(cidr).await?;
        }
        self.release_pool_affinities(pool.value.cidr).await?;
        for b in self.blocks_in(&pool.value.cidr).await? {
            if b.value.is_empty() {
                self.delete_block(b).await?;
            }
        }
        match self
            .store
            .delete::<IpPool>(&pool.name, &pool.revision)
            .await
        {
            Err(StoreError::NotFound { .. }) => Ok(()),
            other => other.map_err(Into::into),
        }
    }

    /// Stores a reservation after checking every entry parses.
    pub async fn create_reservation(&self, name: &str, reservation: IpReservation) -> Result<()> {
        for c in &reservation.reserved_cidrs {
            parse_cidr_or_ip(c)?;
        }
        self.store.create(name, reservation).await?;
        Ok(())
    }

    /// Deletes a reservation.
    pub async fn delete_reservation(&self, name: &str) -> Result<()> {
        let r = self.store.get::<IpReservation>(name).await?;
        self.store
            .delete::<IpReservation>(name, &r.revision)
            .await?;
        Ok(())
    }

    /// Whether `ip` is reserved, and by which reservation.
    pub async fn reserved_by(&self, ip: IpAddr) -> Result<Option<String>> {
        Ok(self.reservations().await?.covering(ip).map(str::to_owned))
    }

    pub(crate) async fn blocks_in(&self, net: &IpNet) -> Result<Vec<Stored<IpamBlock>>> {
        let all = self.store.list::<IpamBlock>(Scope::All).await?;
        Ok(all
            .into_iter()
            .filter(|b| net.contains(&b.value.cidr))
            .collect())
    }

    async fn release_cooled_down_all(&self, cidr: BlockCidr) -> Result<()> {
        self.retry("expiring cooldowns", move || async move {
            let Some(mut b) = self.block_by_cidr(&cidr.to_string()).await? else {
                return Ok(());
            };
            if b.value
                .fold_cooldown(
                    time::OffsetDateTime::new_utc(time::Date::MAX, time::Time::MIDNIGHT),
                    0,
                )
                .is_empty()
            {
                return Ok(());
            }
            self.store.update(&b.name, b.value, &b.revision).await?;
            Ok(())
        })
        .await
    }
}

/// The cross-field rules of IPAMConfig.
pub fn validate_config(c: &IpamConfig) -> Result<()> {
    if !c.strict_affinity && !c.auto_allocate_blocks {
        return Err(Error::InvalidConfig {
            reason: "autoAllocateBlocks=false requires strictAffinity=true",
        });
    }
    if c.max_blocks_per_host > 0 && !c.strict_affinity {
        return Err(Error::InvalidConfig {
            reason: "maxBlocksPerHost>0 requires strictAffinity=true",
        });
    }
    if c.max_blocks_per_host > IpamConfig::MAX_MAX_BLOCKS_PER_HOST {
        return Err(Error::InvalidConfig {
            reason: "maxBlocksPerHost must be at most 1000000",
        });
    }
    if c.ip_cooldown_seconds > IpamConfig::MAX_COOLDOWN_SECONDS {
        return Err(Error::InvalidConfig {
            reason: "ipCooldownSeconds must be between 0 and 1200",
        });
    }
    Ok(())
}

/// Options of [`Ipam::create_pool_with`].
#[derive(Clone, Copy, Debug, Default)]
pub struct PoolCreate {
    /// Accept a CIDR that [`special_range`] names (loopback, multicast, ...).
    pub allow_special_ranges: bool,
}

/// Ranges no workload should get an address from, IPv4 then IPv6, each with why.
const SPECIAL_RANGES: [(&str, &str); 10] = [
    (
        "0.0.0.0/8",
        "overlaps 0.0.0.0/8 (unspecified, \"this network\")",
    ),
    ("127.0.0.0/8", "overlaps 127.0.0.0/8 (loopback)"),
    ("169.254.0.0/16", "overlaps 169.254.0.0/16 (link-local)"),
    ("224.0.0.0/4", "overlaps 224.0.0.0/4 (multicast)"),
    (
        "255.255.255.255/32",
        "contains 255.255.255.255 (limited broadcast)",
    ),
    ("::/128", "contains :: (unspecified)"),
    ("::1/128", "contains ::1 (loopback)"),
    ("fe80::/10", "overlaps fe80::/10 (link-local)"),
    ("ff00::/8", "overlaps ff00::/8 (multicast)"),
    ("::ffff:0.0.0.0/96", "overlaps ::ffff:0:0/96 (IPv4-mapped)"),
];

/// Why `cidr` is a special range a pool should not cover, if it is: the whole address
/// space (`/0`), or any overlap with unspecified, loopback, link-local, multicast or
/// broadcast addresses.
pub fn special_range(cidr: &IpNet) -> Option<&'static str> {
    if cidr.prefix_len() == 0 {
        return Some("is the whole address space (/0)");
    }
    SPECIAL_RANGES.iter().find_map(|(range, why)| {
        // The table is constant and every entry parses (the unit test reads them all).
        let range: IpNet = range.parse().ok()?;
        overlaps(&range, cidr).then_some(*why)
    })
}

/// A pool's own rules: a network address, a block size in range that fits, a valid selector.
pub fn validate_pool(name: &str, pool: &IpPool) -> Result<()> {
    let valid_name = !name.is_empty()
        && name.len() <= crate::names::MAX_NAME_LEN
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
    if !valid_name {
        return Err(Error::InvalidName {
            kind: "pool",
            name: name.to_owned(),
        });
    }
    if pool.cidr.trunc() != pool.cidr {
        return Err(Error::InvalidCidr {
            cidr: pool.cidr.to_string(),
            reason: "host bits are set",
        });
    }
    let size = pool.effective_block_size();
    check_block_size(&pool.cidr, size)?;
    if size < pool.cidr.prefix_len() {
        return Err(Error::InvalidCidr {
            cidr: pool.cidr.to_string(),
            reason: "the pool is smaller than one block",
        });
    }
    BlockCidr::containing(pool.cidr.network(), size)?;
    Selector::parse(&pool.node_selector)?;
    Selector::parse(&pool.namespace_selector)?;
    Ok(())
}

#[cfg(test)]
mod special_range_tests {
    use super::*;

    #[test]
    fn special_ranges_are_named_and_ordinary_ones_pass() {
        for (cidr, why) in [
            ("0.0.0.0/0", "/0"),
            ("::/0", "/0"),
            ("127.0.0.0/24", "loopback"),
            ("126.0.0.0/7", "loopback"),
            ("224.0.0.0/24", "multicast"),
            ("169.254.0.0/24", "link-local"),
            ("0.0.0.0/24", "unspecified"),
            ("255.255.255.0/24", "broadcast"),
            ("::/120", "unspecified"),
            ("fe80::/64", "link-local"),
            ("ff02::/120", "multicast"),
        ] {
            let net: IpNet = cidr.parse().unwrap();
            let reason = special_range(&net).unwrap_or_else(|| panic!("{cidr} passed"));
            assert!(reason.contains(why), "{cidr}: {reason}");
        }
        for cidr in ["10.0.0.0/8", "192.168.0.0/16", "fd00::/8", "2001:db8::/32"] {
            assert_eq!(special_range(&cidr.parse().unwrap()), None, "{cidr}");
        }
        for (range, _) in SPECIAL_RANGES {
            assert!(range.parse::<IpNet>().is_ok(), "{range}");
        }
    }

    #[test]
    fn create_pool_refuses_special_ranges_unless_allowed() {
        pollster::block_on(async {
            let ipam = Ipam::new(crate::MemoryStore::new(), crate::SystemClock);
            let pool = IpPool::new("127.0.0.0/24".parse().unwrap());
            let err = ipam.create_pool("lo", pool.clone()).await.unwrap_err();
            assert!(matches!(err, Error::SpecialRange { .. }), "{err}");
            assert!(
                ipam.store()
                    .list::<IpPool>(Scope::All)
                    .await
                    .unwrap()
                    .is_empty()
            );
            let opts = PoolCreate {
                allow_special_ranges: true,
            };
            ipam.create_pool_with("lo", pool, opts).await.unwrap();
            assert_eq!(
                ipam.store().list::<IpPool>(Scope::All).await.unwrap().len(),
                1
            );
        });
    }
}
