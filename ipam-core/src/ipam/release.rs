//! Release: by address (with sequence numbers and owners), by handle, and cooldown expiry;
//! and the read side of the same index (`ips_by_handle`, `get_assignment_attributes`).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use ipnet::IpNet;

use crate::block::{Cooldown, ReleaseOutcome};
use crate::cidr::BlockCidr;
use crate::clock::rfc3339;
use crate::error::{Error, Result};
use crate::model::{IpPool, IpamBlock};
use crate::names::HandleId;
use crate::store::{BatchWrite, Datastore, Scope, StoreError, Stored, Write};

use super::Ipam;

/// One address to release, optionally guarded by its sequence number and owner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReleaseRequest {
    /// The address.
    pub ip: IpAddr,
    /// Release only if the allocation still carries this sequence number.
    pub sequence: Option<u64>,
    /// Release only if the allocation still belongs to this handle.
    pub handle: Option<String>,
}

/// Who holds an address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allocation {
    /// The address with its block's prefix.
    pub ip: IpNet,
    /// The owner's handle.
    pub handle: Option<String>,
    /// Secondary attributes (node, namespace, pod, ...).
    pub attrs: BTreeMap<String, String>,
    /// The allocation's sequence number, for a guarded release.
    pub sequence: Option<u64>,
    /// When it was released, if it is cooling down.
    pub released_at: Option<String>,
    /// The block's affinity.
    pub affinity: Option<String>,
}

impl ReleaseRequest {
    /// An unguarded release of `ip`.
    pub fn new(ip: IpAddr) -> Self {
        ReleaseRequest {
            ip,
            sequence: None,
            handle: None,
        }
    }
}

impl<D: Datastore> Ipam<D> {
    /// Releases addresses. Idempotent: an address that is not allocated is reported as such,
    /// as are addresses whose sequence number or owner no longer match (left alone).
    pub async fn release_ips(
        &self,
        requests: &[ReleaseRequest],
    ) -> Result<Vec<(IpAddr, ReleaseOutcome)>> {
        self.release_ips_inner(requests, false).await
    }

    /// [`Ipam::release_ips`]; with `immediate`, the addresses skip the cooldown, as undoing
    /// a failed assignment must (nobody ever used them). Others' cooldowns still apply.
    pub(crate) async fn release_ips_inner(
        &self,
        requests: &[ReleaseRequest],
        immediate: bool,
    ) -> Result<Vec<(IpAddr, ReleaseOutcome)>> {
        let cooldown = self.get_config().await?.ip_cooldown_seconds;
        let pools = self.store.list::<IpPool>(Scope::All).await?;
        let mut by_block: BTreeMap<BlockCidr, Vec<&ReleaseRequest>> = BTreeMap::new();
        let mut out = Vec::new();
        let mut all_blocks = None;
        for r in requests {
            match self.locate(r.ip, &pools, &mut all_blocks).await? {
                Some(cidr) => by_block.entry(cidr).or_default().push(r),
                None => out.push((r.ip, ReleaseOutcome::NotAllocated)),
            }
        }
        for (cidr, reqs) in by_block {
            out.extend(
                self.release_in_block(cidr, &reqs, cooldown, immediate)
                    .await?,
            );
        }
        Ok(out)
    }

    /// Releases every address of `handle` and deletes the handle.
    pub async fn release_by_handle(&self, handle: &HandleId) -> Result<Vec<IpNet>> {
        if self.store.commits_releases() {
            if let Some(released) = self.release_by_handle_committed(handle).await? {
                return Ok(released);
            }
        }
        let cooldown = self.get_config().await?.ip_cooldown_seconds;
        let mut released = Vec::new();
        let state = (true, &mut released);
        self.retry_with(
            "releasing a handle",
            state,
            move |(mut first, released)| async move {
                let result = async {
                    let Some(h) = self.handle_if_present(handle.as_str()).await? else {
                        return if std::mem::take(&mut first) {
                            Err(Error::HandleNotFound {
                                handle: handle.to_string(),
                            })
                        } else {
                            Ok(())
                        };
                    };
                    first = false;
                    for cidr in h.value.block.keys() {
                        released.extend(
                            self.release_handle_in_block_once(cidr, handle.as_str(), cooldown)
                                .await?,
                        );
                    }
                    self.delete_handle(h).await
                }
                .await;
                ((first, released), result)
            },
        )
        .await?;
        Ok(released)
    }

    /// [`Ipam::release_by_handle`] on a store with transactions: one read (the handle
    /// snapshot) and one commit (every block the handle names and the handle's delete), so
    /// a lost race leaves nothing half done and the retry starts from scratch. `None` when
    /// the handle names more blocks than one commit takes.
    async fn release_by_handle_committed(&self, handle: &HandleId) -> Result<Option<Vec<IpNet>>> {
        self.retry_with("releasing a handle", true, |first| async move {
            let result = self.release_handle_batch(handle, first).await;
            (false, result)
        })
        .await
    }

    /// One attempt of [`Ipam::release_by_handle_committed`]. A handle gone on a later attempt
    /// was released by someone else in between: nothing is left to do.
    async fn release_handle_batch(
        &self,
        handle: &HandleId,
        first: bool,
    ) -> Result<Option<Vec<IpNet>>> {
        let snap = self.store.handle_snapshot(handle.as_str()).await?;
        let Some(h) = snap.handle else {
            return if first {
                Err(Error::HandleNotFound {
                    handle: handle.to_string(),
                })
            } else {
                Ok(Some(Vec::new()))
            };
        };
        if snap.blocks.len() + 1 > self.store.max_commit_writes() {
            return Ok(None);
        }
        let cooldown = snap
            .config
            .map(|c| c.value)
            .unwrap_or_default()
            .ip_cooldown_seconds;
        let now = self.now();
        let stamp = rfc3339(now);
        let how = if cooldown > 0 {
            Cooldown::Until(&stamp)
        } else {
            Cooldown::None
        };
        let mut released = Vec::new();
        let mut batch = Vec::with_capacity(snap.blocks.len() + 1);
        for mut b in snap.blocks {
            let bc = b.value.block_cidr()?;
            b.value.fold_cooldown(now, cooldown);
            let ordinals = b.value.release_handle(handle.as_str(), how);
            if ordinals.is_empty() {
                continue;
            }
            released.extend(ordinals.into_iter().map(|o| bc.addr_net(o)));
            // Inside one transaction a CAS delete is atomic: no soft-delete step is needed.
            batch.push(BatchWrite::Block(
                if b.value.is_empty() && b.value.affinity.is_none() {
                    Write::Delete {
                        name: b.name,
                        revision: b.revision,
                    }
                } else {
                    Write::Update {
                        name: b.name,
                        value: b.value,
                        revision: b.revision,
                    }
                },
            ));
        }
        batch.push(BatchWrite::Handle(Write::Delete {
            name: h.name,
            revision: h.revision,
        }));
        match self.store.commit(batch).await {
            Ok(_) => Ok(Some(released)),
            Err(e) if e.is_lost_race() => Err(e.into_conflict().into()),
            Err(e) => Err(e.into()),
        }
    }

    /// The addresses `handle` holds (cooling-down ones excluded).
    pub async fn ips_by_handle(&self, handle: &HandleId) -> Result<Vec<IpNet>> {
        let h = self
            .handle_if_present(handle.as_str())
            .await?
            .ok_or_else(|| Error::HandleNotFound {
                handle: handle.to_string(),
            })?;
        let mut out = Vec::new();
        for cidr in h.value.block.keys() {
            let Some(b) = self.block_by_cidr(cidr).await? else {
                continue;
            };
            let bc = b.value.block_cidr()?;
            out.extend(
                b.value
                    .ordinals_of_handle(handle.as_str())
                    .into_iter()
                    .map(|o| bc.addr_net(o)),
            );
        }
        Ok(out)
    }

    /// Who holds `ip`, or `None` when it is free.
    pub async fn get_assignment_attributes(&self, ip: IpAddr) -> Result<Option<Allocation>> {
        let pools = self.store.list::<IpPool>(Scope::All).await?;
        let Some(cidr) = self.locate(ip, &pools, &mut None).await? else {
            return Ok(None);
        };
        let Some(b) = self.block_by_cidr(&cidr.to_string()).await? else {
            return Ok(None);
        };
        let ordinal = cidr.ordinal_of(ip).unwrap_or(0);
        Ok(b.value.attribute_of(ordinal).map(|a| Allocation {
            ip: cidr.addr_net(ordinal),
            handle: a.handle_id.clone(),
            attrs: a.secondary.clone(),
            sequence: b
                .value
                .sequence_number_for_allocation
                .get(&ordinal)
                .copied(),
            released_at: a.released_at.clone(),
            affinity: b.value.affinity.clone(),
        }))
    }

    /// Returns the addresses of one block whose cooldown has passed to the free queue.
    pub async fn release_cooled_down(&self, block: BlockCidr) -> Result<Vec<IpAddr>> {
        let cooldown = self.get_config().await?.ip_cooldown_seconds;
        self.retry("expiring cooldowns", move || async move {
            let Some(mut b) = self.block_by_cidr(&block.to_string()).await? else {
                return Ok(Vec::new());
            };
            let freed = b.value.fold_cooldown(self.now(), cooldown);
            if !freed.is_empty() {
                self.store.update(&b.name, b.value, &b.revision).await?;
            }
            Ok(freed.into_iter().map(|o| block.addr(o)).collect())
        })
        .await
    }

    async fn release_in_block(
        &self,
        cidr: BlockCidr,
        reqs: &[&ReleaseRequest],
        cooldown: u32,
        immediate: bool,
    ) -> Result<Vec<(IpAddr, ReleaseOutcome)>> {
        let (outcomes, freed) = self
            .retry("releasing addresses", async || {
                let Some(mut b) = self.block_by_cidr(&cidr.to_string()).await? else {
                    return Ok((
                        reqs.iter()
                            .map(|r| (r.ip, ReleaseOutcome::NotAllocated))
                            .collect(),
                        HashMap::new(),
                    ));
                };
                let now = self.now();
                let stamp = rfc3339(now);
                let how = if cooldown > 0 && !immediate {
                    Cooldown::Until(&stamp)
                } else {
                    Cooldown::None
                };
                let mut changed = !b.value.fold_cooldown(now, cooldown).is_empty();
                let mut freed: HashMap<String, u32> = HashMap::new();
                let mut outcomes = Vec::new();
                for r in reqs {
                    let ordinal = cidr.ordinal_of(r.ip).unwrap_or(0);
                    let owner = b
                        .value
                        .attribute_of(ordinal)
                        .and_then(|a| a.handle_id.clone());
                    let outcome = b
                        .value
                        .release(ordinal, r.sequence, r.handle.as_deref(), how);
                    if matches!(
                        outcome,
                        ReleaseOutcome::Released | ReleaseOutcome::CoolingDown
                    ) {
                        changed = true;
                        if let Some(h) = owner {
                            *freed.entry(h).or_default() += 1;
                        }
                    }
                    outcomes.push((r.ip, outcome));
                }
                if changed {
                    self.write_released(b).await?;
                }
                Ok((outcomes, freed))
            })
            .await?;
        for (h, n) in freed {
            self.decrement_handle(&h, &cidr.to_string(), n).await?;
        }
        Ok(outcomes)
    }

    /// Releases `handle`'s addresses in one block. One attempt: it runs inside
    /// [`Ipam::release_by_handle`]'s retry.
    async fn release_handle_in_block_once(
        &self,
        cidr: &str,
        handle: &str,
        cooldown: u32,
    ) -> Result<Vec<IpNet>> {
        let Some(mut b) = self.block_by_cidr(cidr).await? else {
            return Ok(Vec::new());
        };
        let bc = b.value.block_cidr()?;
        let now = self.now();
        let stamp = rfc3339(now);
        let how = if cooldown > 0 {
            Cooldown::Until(&stamp)
        } else {
            Cooldown::None
        };
        b.value.fold_cooldown(now, cooldown);
        let ordinals = b.value.release_handle(handle, how);
        if ordinals.is_empty() {
            return Ok(Vec::new());
        }
        self.write_released(b).await?;
        Ok(ordinals.into_iter().map(|o| bc.addr_net(o)).collect())
    }

    /// Writes a block after a release; an empty block that no node owns is deleted.
    async fn write_released(&self, b: Stored<IpamBlock>) -> Result<()> {
        if b.value.is_empty() && b.value.affinity.is_none() {
            self.delete_block(b).await
        } else {
            self.store.update(&b.name, b.value, &b.revision).await?;
            Ok(())
        }
    }

    pub(crate) async fn block_by_cidr(&self, cidr: &str) -> Result<Option<Stored<IpamBlock>>> {
        let net: IpNet = cidr.parse().map_err(|_| Error::InvalidCidr {
            cidr: cidr.to_owned(),
            reason: "not a CIDR",
        })?;
        match self
            .store
            .get::<IpamBlock>(&BlockCidr::new(net)?.name())
            .await
        {
            Ok(b) => Ok(Some(b)),
            Err(StoreError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The block that holds (or would hold) `ip`: from its pool's block size, or, for an
    /// address outside every pool, from the blocks that exist (listed once per call).
    async fn locate(
        &self,
        ip: IpAddr,
        pools: &[Stored<IpPool>],
        all_blocks: &mut Option<Vec<IpNet>>,
    ) -> Result<Option<BlockCidr>> {
        if let Some(p) = pools.iter().find(|p| p.value.cidr.contains(&ip)) {
            return Ok(Some(BlockCidr::containing(
                ip,
                p.value.effective_block_size(),
            )?));
        }
        if all_blocks.is_none() {
            let blocks = self.store.list::<IpamBlock>(Scope::All).await?;
            *all_blocks = Some(blocks.into_iter().map(|b| b.value.cidr).collect());
        }
        let found = all_blocks.iter().flatten().find(|c| c.contains(&ip));
        found.map(|c| BlockCidr::new(*c)).transpose()
    }
}
